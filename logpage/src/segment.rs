//! The log's files: a head file, and segments in which each page is written once, where its LSN
//! says.
//!
//! ```text
//! dir/log.head                        the head: one page, the header below
//! dir/log-<first lsn, 16 hex>.seg     a segment: pages first .. first + P, page lsn at byte
//!                                     (lsn - first) * PAGE_SIZE; P is the head's `pages`
//! dir/log-spare-<n>.seg               a retired segment's file, kept to be reused
//! ```
//!
//! Head, little-endian (the ring header's layout, with its own magic):
//!
//! ```text
//! offset size field
//!      0    8 magic          "PMLOGHD\x01"
//!      8    4 version        HEAD_VERSION
//!     12    4 page_size      PAGE_SIZE
//!     16    8 pages          pages per segment: a quarter of the ring's slots, a power of two
//!     24    4 crc32c         over bytes 0..24
//!     28    4 reserved       zero
//!     32    8 released_lsn   pages below this are no longer the log's to recover (not under the
//!                            crc: rewritten in place each time the ring's horizon advances)
//! ```
//!
//! # Why segments, and not one circular file
//!
//! Until stop 35 the ring's file was circular: slot `lsn % slots`, so every page was overwritten
//! one ring later, and the history a peer catches up from had to be written a second time, into
//! LMDB's `__binlog`. In segments a page stays where it was written until its whole segment is
//! retired, so the log's own writes can be the history (the binlog's bytes were 16% of `demo`'s
//! end-to-end time, measured by skipping them: `src/demo.rs`, Stop 34). Retiring is the owner's
//! call ([`Segments::retire_below`]): at the horizon by default, or by the log's user's retention
//! when it keeps history ([`crate::LogOptions::keep_history`]; core's `binlog.rs`), in which case
//! new segments are written with zeros until retention starts to hand back files to reuse.
//!
//! # The old one-file format
//!
//! A log written before stop 35 (`log.ring`: a header page, then slot `lsn % slots` for page
//! `lsn`) is converted when it is first opened: the run its recovery would have found is written
//! into segments and synced, then the head is written and synced, then `log.ring` is removed. A
//! crash before the head is whole leaves segment files beside `log.ring` and no head, and the
//! next open removes them and converts again; a crash after it finds a whole head beside
//! `log.ring` and only removes the old file.
//!
//! # Writes and syncs
//!
//! A page reaches its segment with one `pwrite` (`ring.rs`, Writes), which then marks the segment
//! dirty. A sync (`fdatasync`) covers every segment marked dirty when it starts: a page whose
//! write returned before the sync began is on disk when the sync returns. Usually one segment is
//! dirty; two where a flush spans a boundary. The head is not synced with the pages: its
//! `released_lsn` is advisory after a power loss (`durable.rs`, Power loss: the store passes its
//! own synced position), and a second file's sync would put a second device flush on every
//! durable commit. It is synced before a segment is retired, so that recovery from the head alone
//! never starts in a segment that is gone.
//!
//! # Installing a segment
//!
//! A segment is installed whole before any page is written into it: a retired segment's file
//! renamed to the segment's name (its blocks were written in its first life), or a new file
//! built under a spare's name, allocated (`posix_fallocate`, so a full disk fails here and not in
//! a page's write), synced, and renamed; then the directory is synced, so that after a power loss
//! the name is the segment's before any page written into it can count as durable. A crash
//! midway leaves a spare of the wrong length, which the next open deletes. A reused file still
//! holds its old pages; their LSNs belong to an older segment and never map to where they lie in
//! the new one, so validation (`page.lsn() == lsn`) never takes one for a page of the log.
//!
//! *Zeros, or only allocated.* A 4 KB `fdatasync` over blocks that were only allocated converts
//! an unwritten extent, a metadata commit (stop 34, p50 over 2,000: 96–115 µs over written
//! blocks, 130–157 µs over fallocated ones). So a new segment's blocks are written with zeros
//! first, but only once a commit has waited for a sync ([`crate::Log::wait_durable`] or
//! `poll_durable` calls [`Segments::zero_new_segments`]): where nobody waits, the zeros double
//! the bytes the log writes and buy nothing. Measured in stop 36 with the history kept in
//! segments (new files until retention hands some back): `demo`, whose commits wait for
//! replicas and never for a sync, went from 0.53 s to 0.415 s end to end without the zeros
//! (medians of eight alternated runs), while `bench commit` with zeros nowhere lost a third of
//! `durable@16` and took `durable@1` from 1.17x to 1.66x the `fdatasync` floor. So a log written
//! by durable commits zeroes each segment it installs after the first wait, in the flusher,
//! ahead of the writes; the segment being written when the first wait came is the only one
//! whose syncs pay the conversion. A retired segment's file, reused, was written in its first
//! life either way.
//!
//! The flusher installs the segment after the one being written once the writes pass its middle
//! ([`Segments::install_ahead`]), so a writer crossing a boundary finds it ready; a writer that
//! finds none installs it itself. A new log installs only the segment it starts in.
//!
//! *Why a segment is a quarter of the ring.* A segment is retired only once the horizon has
//! passed all of it, and the ring holds up to a ring of unreleased pages. With segments as large
//! as the ring, the writer always needed a third segment before the first was retired, so every
//! new log wrote a segment of zeros while its first pages came in: `demo` (24 MB of pages per
//! node, 16 MiB rings) went from 0.645 s to 0.785 s end to end (medians of ten alternated runs)
//! and wrote 59 MB more. With quarter-ring segments the writer, a ring ahead of the horizon at
//! most, finds a retired segment to reuse as long as the log is released (and, where history is
//! kept, retired) as fast as it is written.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions, TryLockError};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};

use crate::error::{Error, Result, RingFault};
use crate::page::{U32Le, U64Le, LSN_LIMIT, PAGE_SIZE};
use crate::sync::{lock, read_lock, write_lock, Arc, AtomicBool, Mutex, Ordering, RwLock};

const HEAD_MAGIC: [u8; 8] = *b"PMLOGHD\x01";
const HEAD_VERSION: u32 = 1;
const RELEASED_LSN_OFFSET: u64 = 32;
/// Segments per ring: a segment holds a quarter of the ring's pages (see Installing a segment).
pub(crate) const SEGMENTS_PER_RING: u64 = 4;
/// Retired segments' files kept for reuse (a ring's worth, and one); more are deleted.
const SPARES_MAX: usize = SEGMENTS_PER_RING as usize + 1;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Head {
    magic: [u8; 8],
    version: U32Le,
    page_size: U32Le,
    pages: U64Le,
    crc: U32Le,
    reserved: U32Le,
    released_lsn: U64Le,
}
const _: () = assert!(std::mem::size_of::<Head>() == RELEASED_LSN_OFFSET as usize + 8);
const _: () = assert!(std::mem::offset_of!(Head, released_lsn) == RELEASED_LSN_OFFSET as usize);
const CRC_COVERED: usize = std::mem::offset_of!(Head, crc);

impl Head {
    fn new(pages: u64) -> Self {
        let mut head = Self {
            magic: HEAD_MAGIC,
            version: U32Le::new(HEAD_VERSION),
            page_size: U32Le::new(PAGE_SIZE as u32),
            pages: U64Le::new(pages),
            crc: U32Le::new(0),
            reserved: U32Le::new(0),
            released_lsn: U64Le::new(0),
        };
        head.crc = U32Le::new(crc32c::crc32c(&bytemuck::bytes_of(&head)[..CRC_COVERED]));
        head
    }

    /// Checks the head against segments of `pages` pages.
    fn check(&self, pages: u64) -> std::result::Result<(), RingFault> {
        if self.magic != HEAD_MAGIC {
            return Err(RingFault::Magic);
        }
        if self.version.get() != HEAD_VERSION {
            return Err(RingFault::Version {
                found: self.version.get(),
                supported: HEAD_VERSION,
            });
        }
        if crc32c::crc32c(&bytemuck::bytes_of(self)[..CRC_COVERED]) != self.crc.get() {
            return Err(RingFault::Checksum);
        }
        if self.released_lsn.get() >= LSN_LIMIT {
            return Err(RingFault::Horizon {
                lsn: self.released_lsn.get(),
            });
        }
        if self.page_size.get() as usize != PAGE_SIZE || self.pages.get() != pages {
            return Err(RingFault::SlotCount {
                found: self.pages.get().saturating_mul(SEGMENTS_PER_RING),
                configured: pages * SEGMENTS_PER_RING,
            });
        }
        Ok(())
    }
}

/// The pages per segment the head in `dir` says, read without the log's lock (a history reader
/// beside the log's owner); none if there is no head, or it is empty.
pub(crate) fn read_head_pages(dir: &Path) -> Result<Option<u64>> {
    let path = dir.join("log.head");
    let file = match File::open(&path) {
        Ok(file) => file,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(io_error("open", &path)(error)),
    };
    let mut head = Head::zeroed();
    match file.read_exact_at(bytemuck::bytes_of_mut(&mut head), 0) {
        Ok(()) => {}
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(error) => return Err(io_error("read", &path)(error)),
    }
    if head.magic == [0; 8] {
        return Ok(None);
    }
    let pages = head.pages.get();
    let fault = if !pages.is_power_of_two() || pages > 1 << 24 {
        Some(RingFault::SlotCount {
            found: pages.saturating_mul(SEGMENTS_PER_RING),
            configured: 0,
        })
    } else {
        head.check(pages).err()
    };
    match fault {
        Some(fault) => Err(Error::RingFile { path, fault }),
        None => Ok(Some(pages)),
    }
}

/// The name of the segment whose first page is `first`.
pub(crate) fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(segment_name(first))
}

/// First LSNs of the segment files in `dir` (not spares), in order.
pub(crate) fn segment_firsts(dir: &Path) -> Result<Vec<u64>> {
    let mut firsts = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name();
        let Some(stem) = name
            .to_str()
            .and_then(|name| name.strip_prefix("log-"))
            .and_then(|name| name.strip_suffix(".seg"))
        else {
            continue;
        };
        if let (16, Ok(first)) = (stem.len(), u64::from_str_radix(stem, 16)) {
            firsts.push(first);
        }
    }
    firsts.sort_unstable();
    Ok(firsts)
}

/// One segment's open file.
struct Segment {
    first: u64,
    path: PathBuf,
    file: File,
    /// Written since the last sync began.
    dirty: AtomicBool,
}

impl Segment {
    /// Writes `bytes` (whole pages, the first one page `lsn`) in place and marks the segment
    /// dirty.
    fn write(&self, lsn: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.file
            .write_all_at(bytes, (lsn - self.first) * PAGE_SIZE as u64)?;
        // After the write: a sync that sees the flag clear began before the write returned,
        // and does not count the page (`durable.rs` takes its target before syncing).
        self.dirty.store(true, Ordering::Release);
        Ok(())
    }
}

/// The head file and the segments of one log directory.
pub(crate) struct Segments {
    dir: PathBuf,
    /// Pages per segment: a power of two.
    pages: u64,
    head_path: PathBuf,
    /// Locked (`flock`) for as long as the log is open: the directory's lock.
    head: File,
    /// Installed segments by first LSN.
    installed: RwLock<BTreeMap<u64, Arc<Segment>>>,
    /// Retired files waiting for reuse.
    spares: Mutex<Vec<PathBuf>>,
    /// Serialises installs (so a segment is installed once) and retirements.
    install_lock: Mutex<()>,
    /// New segments' blocks are written with zeros (see Installing a segment): set once a
    /// commit has waited for a sync.
    zero_fill: AtomicBool,
}

/// What the head said when the segments were opened.
pub(crate) struct Opened {
    pub segments: Segments,
    pub released_lsn: u64,
}

fn segment_name(first: u64) -> String {
    format!("log-{first:016x}.seg")
}

fn io_error<'p>(op: &'static str, path: &'p Path) -> impl FnOnce(std::io::Error) -> Error + 'p {
    move |source| Error::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Segments {
    /// Opens (or creates) `dir/log.head`, locked, and the segment files beside it, for a ring of
    /// `slots` slots (a power of two, at least [`SEGMENTS_PER_RING`]). A log in the old
    /// one-file format (`log.ring`) is converted (see [`read_legacy`]).
    pub fn open(dir: &Path, slots: u64) -> Result<Opened> {
        let pages = slots / SEGMENTS_PER_RING;
        std::fs::create_dir_all(dir).map_err(io_error("create directory for", dir))?;
        let head_path = dir.join("log.head");
        let legacy_path = dir.join("log.ring");
        let head = open_locked(&head_path)?;
        let len = head.metadata().map_err(io_error("stat", &head_path))?.len();
        let mut header = Head::zeroed();
        let whole = len >= PAGE_SIZE as u64
            && head
                .read_exact_at(bytemuck::bytes_of_mut(&mut header), 0)
                .is_ok()
            && header.magic == HEAD_MAGIC;
        let legacy = legacy_path.exists();
        if whole {
            header.check(pages).map_err(|fault| Error::RingFile {
                path: head_path.clone(),
                fault,
            })?;
            if legacy {
                // A conversion that stopped after its head was written: its pages are in place.
                remove_legacy(&legacy_path, dir)?;
            }
            let segments = Self::new(dir, pages, head_path, head);
            segments.scan_dir()?;
            return Ok(Opened {
                segments,
                released_lsn: header.released_lsn.get(),
            });
        }
        if len != 0 && !all_zero(&head, len) {
            return Err(Error::RingFile {
                path: head_path,
                fault: RingFault::Magic,
            });
        }
        // New, or a creation a crash cut off before the header was whole. The head is written
        // and synced before any segment is installed (after them, when converting), so segment
        // files here are a conversion's that a crash cut off, removed to begin it again; or a
        // log whose head was removed: refused, never reused.
        while let Some(path) = first_segment_file(dir)? {
            if !legacy {
                return Err(Error::RingFile {
                    path,
                    fault: RingFault::Orphans,
                });
            }
            std::fs::remove_file(&path).map_err(io_error("remove", &path))?;
        }
        let converted = match legacy {
            true => Some(read_legacy(&legacy_path, slots)?),
            false => None,
        };
        let segments = Self::new(dir, pages, head_path, head);
        segments.scan_dir()?;
        let released_lsn = match &converted {
            Some(run) => {
                segments.write_converted(run)?;
                run.start_lsn
            }
            None => 0,
        };
        let mut page = vec![0u8; PAGE_SIZE];
        let mut header = Head::new(pages);
        header.released_lsn = U64Le::new(released_lsn);
        page[..std::mem::size_of::<Head>()].copy_from_slice(bytemuck::bytes_of(&header));
        (segments.head.write_all_at(&page, 0))
            .and_then(|()| segments.head.sync_data())
            .map_err(io_error("write the header of", &segments.head_path))?;
        sync_dir(dir)?;
        if converted.is_some() {
            remove_legacy(&legacy_path, dir)?;
        }
        // The first segment is installed where the log continues (recovery's `prepare`), and
        // the next ones ahead of the writes (see Installing a segment).
        Ok(Opened {
            segments,
            released_lsn,
        })
    }

    fn new(dir: &Path, pages: u64, head_path: PathBuf, head: File) -> Self {
        Self {
            dir: dir.to_path_buf(),
            pages,
            head_path,
            head,
            installed: RwLock::new(BTreeMap::new()),
            spares: Mutex::new(Vec::new()),
            install_lock: Mutex::new(()),
            zero_fill: AtomicBool::new(false),
        }
    }

    /// Writes a converted log's pages into their segments and syncs them.
    fn write_converted(&self, run: &LegacyRun) -> Result<()> {
        let io = io_error("write the converted pages of", &self.head_path);
        for (index, page) in run.pages.chunks_exact(PAGE_SIZE).enumerate() {
            self.write(run.start_lsn + index as u64, page)
                .map_err(|source| Error::Io {
                    op: "write the converted pages of",
                    path: self.head_path.clone(),
                    source,
                })?;
        }
        self.sync().map_err(io)
    }

    /// Opens every segment file in the directory, and takes other `log-*.seg` files as spares.
    fn scan_dir(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.dir).map_err(io_error("list", &self.dir))?;
        let mut installed = BTreeMap::new();
        let mut spares = Vec::new();
        for entry in entries {
            let entry = entry.map_err(io_error("list", &self.dir))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some(stem) = name
                .strip_prefix("log-")
                .and_then(|s| s.strip_suffix(".seg"))
            else {
                continue;
            };
            let path = entry.path();
            let first = match u64::from_str_radix(stem, 16) {
                Ok(first) if stem.len() == 16 && first % self.pages == 0 => first,
                _ => {
                    spares.push(path);
                    continue;
                }
            };

            let file = open_segment(&path)?;
            let len = file.metadata().map_err(io_error("stat", &path))?.len();
            if len != self.segment_bytes() {
                return Err(Error::RingFile {
                    path,
                    fault: RingFault::Length {
                        found: len,
                        expected: self.segment_bytes(),
                    },
                });
            }
            installed.insert(
                first,
                Arc::new(Segment {
                    first,
                    path,
                    file,
                    dirty: AtomicBool::new(false),
                }),
            );
        }
        spares.sort();
        // A spare of the wrong length is an install a crash cut off.
        let mut whole_spares = Vec::new();
        for path in spares {
            let len = std::fs::metadata(&path)
                .map_err(io_error("stat", &path))?
                .len();
            if len == self.segment_bytes() {
                whole_spares.push(path);
            } else {
                std::fs::remove_file(&path).map_err(io_error("remove", &path))?;
            }
        }
        let spares = whole_spares;
        *write_lock(&self.installed) = installed;
        let mut kept = lock(&self.spares);
        for path in spares {
            if kept.len() < SPARES_MAX {
                kept.push(path);
            } else {
                std::fs::remove_file(&path).map_err(io_error("remove", &path))?;
            }
        }
        Ok(())
    }

    fn segment_bytes(&self) -> u64 {
        self.pages * PAGE_SIZE as u64
    }

    /// Pages per segment.
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// The first LSN of the segment holding page `lsn`.
    pub fn first_of(&self, lsn: u64) -> u64 {
        lsn & !(self.pages - 1)
    }

    pub fn head_path(&self) -> &Path {
        &self.head_path
    }

    /// The path of the segment holding page `lsn` (installed or not): for error messages.
    pub fn path_of(&self, lsn: u64) -> PathBuf {
        self.dir.join(segment_name(self.first_of(lsn)))
    }

    fn get(&self, lsn: u64) -> Option<Arc<Segment>> {
        read_lock(&self.installed).get(&self.first_of(lsn)).cloned()
    }

    /// Whether the segment holding page `lsn` is installed.
    pub fn is_installed(&self, lsn: u64) -> bool {
        self.get(lsn).is_some()
    }

    /// First LSNs of the installed segments, in order.
    pub fn installed(&self) -> Vec<u64> {
        read_lock(&self.installed).keys().copied().collect()
    }

    /// When the segment starting at `first` was last written, if it is installed.
    pub fn modified(&self, first: u64) -> Option<std::time::SystemTime> {
        let segment = self.get(first)?;
        segment.file.metadata().and_then(|m| m.modified()).ok()
    }

    /// Reads page `lsn` into `buf`; false if its segment is not installed.
    pub fn read_page(&self, lsn: u64, buf: &mut [u8; PAGE_SIZE]) -> std::io::Result<bool> {
        let Some(segment) = self.get(lsn) else {
            return Ok(false);
        };
        segment
            .file
            .read_exact_at(buf, (lsn - segment.first) * PAGE_SIZE as u64)?;
        Ok(true)
    }

    /// Writes `bytes` (whole pages, the first one page `lsn`, none past its segment) where they
    /// belong, installing the segment if needed, and marks it dirty.
    pub fn write(&self, lsn: u64, bytes: &[u8]) -> std::io::Result<()> {
        debug_assert_eq!(bytes.len() % PAGE_SIZE, 0);
        debug_assert!(
            lsn - self.first_of(lsn) + (bytes.len() / PAGE_SIZE) as u64 <= self.pages,
            "a write stays in one segment"
        );
        // Under the read lock, not a clone of the segment's `Arc`: no shared counter is
        // written per page. Installs and retirements, which write the map, are rare.
        let installed = read_lock(&self.installed);
        if let Some(segment) = installed.get(&self.first_of(lsn)) {
            return segment.write(lsn, bytes);
        }
        drop(installed);
        self.install(self.first_of(lsn))?.write(lsn, bytes)
    }

    /// Puts every page written so far on disk: one `fdatasync` per segment written since the
    /// last sync began. On failure the segment stays dirty.
    ///
    /// Why a page below the committed watermark the flusher read is covered: its writer stored
    /// the segment's flag (Release) after its `pwrite` returned and before it marked the page
    /// ready (SeqCst), and the flusher read the watermark (SeqCst) before it loads the flags
    /// here, so it sees that store, or a later one, and syncs the segment.
    pub fn sync(&self) -> std::io::Result<()> {
        // The map is read-locked through the syncs: nothing is allocated per flush, and an
        // install or retirement (rare) waits for them.
        for segment in read_lock(&self.installed).values() {
            if segment.dirty.load(Ordering::Acquire) && segment.dirty.swap(false, Ordering::AcqRel)
            {
                if let Err(error) = segment.file.sync_data() {
                    segment.dirty.store(true, Ordering::Release);
                    return Err(error);
                }
            }
        }
        Ok(())
    }

    /// Records that pages below `lsn` are no longer the log's to recover (not synced; see
    /// Writes and syncs).
    pub fn persist_released_lsn(&self, lsn: u64) -> std::io::Result<()> {
        self.head
            .write_all_at(&lsn.to_le_bytes(), RELEASED_LSN_OFFSET)
    }

    /// From now on, new segments' blocks are written with zeros before use: a commit waits for
    /// syncs (see Installing a segment).
    pub fn zero_new_segments(&self) {
        if !self.zero_fill.load(Ordering::Relaxed) {
            self.zero_fill.store(true, Ordering::Relaxed);
        }
    }

    /// Whether new segments' blocks are written with zeros (see Installing a segment).
    #[cfg(all(test, not(feature = "shuttle")))]
    pub fn zeroes_new_segments(&self) -> bool {
        self.zero_fill.load(Ordering::Relaxed)
    }

    /// Installs the segment holding page `lsn`, if it is not installed yet.
    pub fn prepare(&self, lsn: u64) -> std::io::Result<()> {
        if self.get(lsn).is_none() {
            self.install(self.first_of(lsn))?;
        }
        Ok(())
    }

    /// Installs the segment after the one holding page `lsn` once `lsn` is past the middle of
    /// its segment, if it is not installed yet. Not sooner: by then the segment before the one
    /// being written has been retired as often as not (the ring holds a segment's worth of
    /// unreleased pages at most), and its file is reused instead of a new one being written
    /// with zeros.
    pub fn install_ahead(&self, lsn: u64) -> std::io::Result<()> {
        let next = self.first_of(lsn) + self.pages;
        if lsn - self.first_of(lsn) >= self.pages / 2 && self.get(next).is_none() {
            self.install(next)?;
        }
        Ok(())
    }

    /// Installs the segment starting at `first` (see Installing a segment). An error names the
    /// segment's file.
    ///
    /// Segments are installed in LSN order: any missing between the highest installed one and
    /// `first` (a ring apart at most) go first. Writers finish pages out of order, and one that writes into a later
    /// segment must not install it while an earlier one is missing: recovery takes a segment
    /// missing below an installed one for a retirement, and refuses the pages above it.
    fn install(&self, first: u64) -> std::io::Result<Arc<Segment>> {
        let _guard = lock(&self.install_lock);
        if let Some(segment) = self.get(first) {
            return Ok(segment);
        }
        // Writers finish pages at most a ring apart; a log that continues further on (past the
        // pages it recovered, `Log::open`) starts a new run and has nothing to fill.
        let top = read_lock(&self.installed).keys().next_back().copied();
        let from = match top {
            Some(top) if top < first && first - top <= SEGMENTS_PER_RING * self.pages => {
                top + self.pages
            }
            _ => first,
        };
        let mut installed = None;
        for at in (from..=first).step_by(self.pages as usize) {
            let path = self.dir.join(segment_name(at));
            let segment = self.install_file(at, &path).map_err(|source| {
                std::io::Error::new(
                    source.kind(),
                    format!("install log segment {}: {source}", path.display()),
                )
            })?;
            installed = Some(segment);
        }
        installed.ok_or_else(|| std::io::Error::other("no segment to install"))
    }

    fn install_file(&self, first: u64, path: &Path) -> std::io::Result<Arc<Segment>> {
        let path = path.to_path_buf();
        let spare = lock(&self.spares).pop();
        let file = match spare {
            Some(spare) => {
                std::fs::rename(&spare, &path)?;
                open_segment_io(&path)?
            }
            None => {
                // Built under a spare's name and renamed whole: a crash midway leaves a spare
                // of the wrong length, which the next open deletes.
                let new = self.dir.join("log-spare-new.seg");
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&new)?;
                file.set_len(self.segment_bytes())?;
                allocate(&file, self.segment_bytes())?;
                if self.zero_fill.load(Ordering::Relaxed) {
                    // Zeros through a mapping, not `write(2)`: the page cache keeps what
                    // `write` creates as large folios, and each later 4 KB write into one then
                    // dirtied the whole folio for the next sync (5.9× and 24.9× the cost of
                    // syncing the page, in two runs of `benches/durable.rs`, when the ring's
                    // file was made that way).
                    // SAFETY: the file was just created by this thread under a name no other
                    // process uses (the log's lock is held), sized above; nothing truncates it
                    // while mapped, and the mapping is dropped before the file is renamed.
                    let mut map = unsafe { memmap2::MmapMut::map_mut(&file) }?;
                    map.fill(0);
                    map.flush()?;
                    drop(map);
                } else {
                    // Its length and blocks on disk before its name is: an open after a crash
                    // finds a whole segment or a spare of the wrong length (deleted).
                    file.sync_data()?;
                }
                std::fs::rename(&new, &path)?;
                file
            }
        };
        sync_dir_io(&self.dir)?;
        tracing::debug!(first, path = %path.display(), "log segment installed");
        let segment = Arc::new(Segment {
            first,
            path,
            file,
            dirty: AtomicBool::new(false),
        });
        write_lock(&self.installed).insert(first, Arc::clone(&segment));
        Ok(segment)
    }

    /// Retires every segment wholly below `lsn`: its file becomes a spare (or is deleted when
    /// enough are kept). The head is synced first (see Writes and syncs). The caller must hold
    /// no page below `lsn` it still needs, and `lsn` must not be above the released horizon.
    pub fn retire_below(&self, lsn: u64) -> std::io::Result<()> {
        let retired: Vec<Arc<Segment>> = read_lock(&self.installed)
            .values()
            .filter(|segment| segment.first + self.pages <= lsn)
            .cloned()
            .collect();
        if retired.is_empty() {
            return Ok(());
        }
        let _guard = lock(&self.install_lock);
        self.head.sync_data()?;
        for segment in retired {
            write_lock(&self.installed).remove(&segment.first);
            let mut spares = lock(&self.spares);
            if spares.len() < SPARES_MAX {
                let spare = self.dir.join(format!("log-spare-{}.seg", segment.first));
                std::fs::rename(&segment.path, &spare)?;
                spares.push(spare);
            } else {
                std::fs::remove_file(&segment.path)?;
            }
            tracing::debug!(first = segment.first, "log segment retired");
        }
        Ok(())
    }

    /// Zeroes page `lsn`'s magic in its segment (if installed), so no later recovery takes it
    /// for a page; the segment is synced with the others by the next [`Segments::sync`].
    pub fn invalidate(&self, lsn: u64) -> std::io::Result<()> {
        if let Some(segment) = self.get(lsn) {
            segment
                .file
                .write_all_at(&[0; 4], (lsn - segment.first) * PAGE_SIZE as u64)?;
            segment.dirty.store(true, Ordering::Release);
        }
        Ok(())
    }
}

/// The head, then every segment and spare segment file in `dir`, by name (see [`crate::Log::files`]).
pub(crate) fn files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries {
                let path = entry?.path();
                let name = path
                    .file_name()
                    .and_then(|name| name.to_str())
                    .unwrap_or("");
                if name.starts_with("log-") && name.ends_with(".seg") {
                    found.push(path);
                }
            }
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(error),
    }
    found.sort();
    let head = dir.join("log.head");
    if head.exists() {
        found.insert(0, head);
    }
    Ok(found)
}

/// What the old one-file format (`log.ring`, before stop 35) held: the run recovery would have
/// found there.
struct LegacyRun {
    start_lsn: u64,
    /// The run's pages, back to back.
    pages: Vec<u8>,
}

const LEGACY_MAGIC: [u8; 8] = *b"PMRING\0\x01";

/// Reads the run of pages a log in the old one-file format holds, as its recovery found it: a
/// header page (the head's layout, magic `PMRING\0\x01`, `pages` being the ring's slots), then
/// slot `i` at byte `PAGE_SIZE * (1 + i)` holding page `lsn` with `lsn % slots == i`; the run
/// starts at the header's released LSN and ends at the first slot that does not hold its page.
/// The file is locked while it is read, as the old format locked it.
fn read_legacy(path: &Path, slots: u64) -> Result<LegacyRun> {
    let file = open_locked(path)?;
    let refuse = |fault| Error::RingFile {
        path: path.to_path_buf(),
        fault,
    };
    let mut header = Head::zeroed();
    file.read_exact_at(bytemuck::bytes_of_mut(&mut header), 0)
        .map_err(io_error("read the header of", path))?;
    if header.magic != LEGACY_MAGIC {
        return Err(refuse(RingFault::Magic));
    }
    if header.version.get() != 1 {
        return Err(refuse(RingFault::Version {
            found: header.version.get(),
            supported: 1,
        }));
    }
    if crc32c::crc32c(&bytemuck::bytes_of(&header)[..CRC_COVERED]) != header.crc.get() {
        return Err(refuse(RingFault::Checksum));
    }
    if header.pages.get() != slots || header.page_size.get() as usize != PAGE_SIZE {
        return Err(refuse(RingFault::SlotCount {
            found: header.pages.get(),
            configured: slots,
        }));
    }
    let start_lsn = header.released_lsn.get();
    if start_lsn >= LSN_LIMIT {
        return Err(refuse(RingFault::Horizon { lsn: start_lsn }));
    }
    let mut pages = Vec::new();
    let mut page = vec![0u8; PAGE_SIZE];
    for lsn in start_lsn..start_lsn + slots {
        let at = PAGE_SIZE as u64 * (1 + lsn % slots);
        if file.read_exact_at(&mut page, at).is_err() {
            break;
        }
        match crate::page::validate(&page) {
            Ok(found) if found.lsn() == lsn => pages.extend_from_slice(&page),
            _ => break,
        }
    }
    tracing::info!(
        path = %path.display(),
        start_lsn,
        pages = pages.len() / PAGE_SIZE,
        "converting a log of the old one-file format to segments"
    );
    Ok(LegacyRun { start_lsn, pages })
}

/// Removes the old format's file once its pages are in segments under a synced head.
fn remove_legacy(path: &Path, dir: &Path) -> Result<()> {
    std::fs::remove_file(path).map_err(io_error("remove", path))?;
    sync_dir(dir)
}

/// A file in `dir` named like a segment (not a spare), if there is one.
fn first_segment_file(dir: &Path) -> Result<Option<PathBuf>> {
    for entry in std::fs::read_dir(dir).map_err(io_error("list", dir))? {
        let entry = entry.map_err(io_error("list", dir))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("log-") && name.ends_with(".seg") && !name.starts_with("log-spare-") {
            return Ok(Some(entry.path()));
        }
    }
    Ok(None)
}

fn all_zero(file: &File, len: u64) -> bool {
    let mut buf = vec![0u8; len.min(PAGE_SIZE as u64) as usize];
    file.read_exact_at(&mut buf, 0).is_ok() && buf.iter().all(|&byte| byte == 0)
}

fn open_segment_io(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
}

fn open_segment(path: &Path) -> Result<File> {
    open_segment_io(path).map_err(io_error("open", path))
}

fn sync_dir_io(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn sync_dir(dir: &Path) -> Result<()> {
    sync_dir_io(dir).map_err(io_error("sync", dir))
}

/// Allocates the blocks of `file`'s first `len` bytes, so a full disk fails here and not in a
/// page's write (`ring.rs`, Space).
pub(crate) fn allocate(file: &File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: posix_fallocate takes a descriptor and two integers, no pointers; `file` is open
    // (borrowed for the call), so the descriptor is valid.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        // Returns the error number itself; glibc falls back to writing where the filesystem
        // lacks fallocate, so EOPNOTSUPP/EINVAL mean neither way is possible: the file stays
        // sparse, as it would be on any system without the call.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

/// Opens (creating it empty if missing) and locks the head file at `path`. The lock is an
/// `flock` on an open file description, and a process that forks (a thread of this process
/// spawning a child, say) holds a copy of every descriptor until the child's exec closes it, so
/// a log this process just closed can look locked for that moment: a held lock is retried for
/// up to 50 ms before it is taken to belong to someone else.
pub(crate) fn open_locked(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io_error("open", path))?;
    for attempt in 0..=10 {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if attempt < 10 => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(TryLockError::WouldBlock) => break,
            Err(TryLockError::Error(source)) => return Err(io_error("lock", path)(source)),
        }
    }
    Err(Error::RingFile {
        path: path.to_path_buf(),
        fault: RingFault::Locked,
    })
}
