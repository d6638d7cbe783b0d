//! The ring: a working copy of `slots` page slots in memory, and the log's files behind it.
//!
//! ```text
//! working copy offset    content
//! PAGE_SIZE * i          slot i: holds page lsn with lsn % slots == i
//! ```
//!
//! The files are a head and segments of a quarter of the ring each (`segment.rs`): page `lsn`
//! lies in the segment beginning at `lsn - lsn % (slots / 4)`. So a slot's page is written to
//! the disk once, and stays there after the slot is reused, until its segment is retired.
//!
//! # Writes: a working copy in memory, whole pages to the files
//!
//! Writers and readers use a working copy of the slots in anonymous memory. Each page reaches its
//! segment whole, with one `pwrite` by the thread that finishes it (`Ring::write_through`),
//! *before* the committed watermark passes it: so a *process* crash loses nothing below the
//! watermark, the kernel's page cache holds it. A *power loss* keeps only what a completed sync
//! put on disk: the log's durable watermark (`durable.rs`) says which pages those are, and that
//! module's docs say what recovery finds after each kind of crash. `Ring::sync` is one
//! `fdatasync` per segment written since the last sync.
//!
//! *Why not stores through a shared mapping* (DESIGN.md's "memmap2-backed file"; the ring was
//! built that way first). Writeback write-protects every dirty page that is mapped writable
//! (`folio_mkclean`), which flushes the TLB of every core running a thread of this process, one
//! inter-processor interrupt round per page, and the next store into the page takes a write
//! fault to make it writable again. On these 2-vCPU VMs, where an IPI is a VM exit, `perf`
//! put 30% of all CPU time of `bench replicate` (`sync`, 256 in flight) in those flushes
//! (`smp_call_function_many_cond` and `native_write_msr` under `fdatasync`), and each node's
//! flusher thread at 16–18% of the samples. A page written with `pwrite` is not mapped, so
//! writeback has no mapping to clean. The cost moves to one 4 KB `pwrite` per page on the
//! thread that finishes it (a page holds 16 of the bench's records), and the working copy is as
//! large as the ring.
//!
//! A page in a segment is therefore only ever written whole, once (recovery's invalidations
//! aside: below); the slots the horizon passes are invalidated in the working copy only.
//!
//! # Recovery
//!
//! On open, the log's pages are found in their segments from `released_lsn` (the head's horizon,
//! persisted *before* any slot below it is reset), or from the store's `recover_from` if that is
//! higher: each page must validate (magic, fields, crc) and hold the LSN of its place, and the
//! first page that is missing, torn, never finished or of another LSN is the end of the log. The
//! run is read into the working copy. Any finished page beyond the end (pages finish out of
//! order) was never below the committed watermark: it is invalidated in its segment (magic
//! zeroed, and synced before the log takes a write), so a later recovery can never take it for
//! part of the log once new pages fill the gap before it. Pages below the start stay in their
//! segments: they are history, not the log's to recover.
//!
//! After a power loss the head on disk may be older than the last horizon written (it is synced
//! only before a segment is retired: `segment.rs`). Its pages are still in their segments, so
//! the end is still found; and since never more than a ring of pages is unreleased, a run longer
//! than the ring starts a ring before its end. (The circular file this replaced could not tell:
//! its slots below a stale header's horizon held later pages, and recovery stopped short unless
//! the store passed `recover_from`.)
//!
//! # Space
//!
//! A segment's blocks are allocated and written when it is installed, before any page is written
//! into it (`segment.rs`, Installing a segment), and the segment after the one being written is
//! installed ahead by the flusher. A full disk shows up as a clear error from `Ring::open` or
//! from the install, and every page's write lands in blocks the file already owns (a `pwrite`
//! that failed for space would poison the log in the middle of a commit).

use std::path::{Path, PathBuf};

use memmap2::MmapMut;

use crate::error::{Error, Result};
use crate::page::{validate, PAGE_SIZE};
use crate::segment::Segments;

/// The pages the ring held when it was opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recovered {
    /// First page of the recovered run.
    pub start_lsn: u64,
    /// One past the last page of the run: where the log continues.
    pub end_lsn: u64,
    /// Highest epoch among the recovered pages (0 if none).
    pub epoch_max: u64,
    /// Finished pages beyond the first gap, discarded.
    pub discarded_pages: u64,
}

/// The slots' working copy and the files behind it.
pub(crate) struct Ring {
    /// The working copy, in anonymous memory: owns what `base` points into.
    _map: MmapMut,
    /// Base of `map`. Writers copy into disjoint byte ranges through it; see `Log`.
    base: *mut u8,
    slots: u64,
    /// The log's files; none for a ring in anonymous memory.
    segments: Option<Segments>,
    /// Segments below the horizon stay until their owner retires them
    /// ([`crate::Log::retire_history_below`]): see [`crate::LogOptions::keep_history`].
    keep_history: bool,
}

// SAFETY: `Ring` is a mapping plus its base pointer. The pointer is only dereferenced through the
// methods below, whose callers (the log) guarantee that no two threads write the same byte range
// concurrently and that a range is read only after its writers' stores were published (Release
// on the slot's accounting word or ready tag, Acquire by the reader). The mapping itself is owned
// and outlives every use, since the `Ring` is dropped only with the log's shared state.
unsafe impl Send for Ring {}
// SAFETY: as for `Send`: all shared access goes through the disjoint-range discipline above.
unsafe impl Sync for Ring {}

fn working_copy(slots: u64, path: &Path) -> Result<MmapMut> {
    MmapMut::map_anon(slots as usize * PAGE_SIZE).map_err(|source| Error::Io {
        op: "map the working copy of",
        path: path.to_path_buf(),
        source,
    })
}

impl Ring {
    /// Opens (or creates) the log's files in `dir`, with segments of `slots` pages, and recovers
    /// its pages, from `recover_from` if that is above the persisted horizon.
    pub fn open(dir: &Path, slots: u64, recover_from: Option<u64>) -> Result<(Self, Recovered)> {
        let opened = Segments::open(dir, slots)?;
        let head = opened.segments.head_path().to_path_buf();
        let mut map = working_copy(slots, &head)?;
        let start_min = recover_from.unwrap_or(0);
        let recovered = recover(&mut map, &opened.segments, opened.released_lsn, start_min)
            .map_err(|source| Error::Io {
                op: "recover",
                path: head,
                source,
            })?;
        Ok((Self::from_map(map, slots, Some(opened.segments)), recovered))
    }

    /// Takes and releases the lock of the log in `dir` (creating its head empty if missing); see
    /// [`crate::Log::probe_lock`].
    pub fn probe_lock(dir: &Path) -> Result<()> {
        crate::segment::open_locked(&dir.join("log.head")).map(drop)
    }

    /// A ring in anonymous memory: nothing survives the process. For tests and benchmarks.
    pub fn anonymous(slots: u64) -> Result<(Self, Recovered)> {
        let map = working_copy(slots, Path::new("<anonymous>"))?;
        let ring = Self::from_map(map, slots, None);
        let recovered = Recovered {
            start_lsn: 0,
            end_lsn: 0,
            epoch_max: 0,
            discarded_pages: 0,
        };
        Ok((ring, recovered))
    }

    fn from_map(mut map: MmapMut, slots: u64, segments: Option<Segments>) -> Self {
        let base = map.as_mut_ptr();
        Self {
            _map: map,
            base,
            slots,
            segments,
            keep_history: false,
        }
    }

    /// New segments' blocks are written with zeros from now on: a commit waited for a sync.
    pub fn zero_new_segments(&self) {
        if let Some(segments) = &self.segments {
            segments.zero_new_segments();
        }
    }

    /// Whether new segments' blocks are written with zeros (none in memory).
    #[cfg(all(test, not(feature = "shuttle")))]
    pub fn zeroes_new_segments(&self) -> bool {
        self.segments
            .as_ref()
            .is_some_and(Segments::zeroes_new_segments)
    }

    /// Keeps segments below the horizon as history instead of retiring them with it.
    pub fn set_keep_history(&mut self, keep: bool) {
        self.keep_history = keep;
    }

    /// Retires the segments wholly below `lsn`, which must not be above the persisted horizon.
    pub fn retire_below(&self, lsn: u64) -> std::io::Result<()> {
        match &self.segments {
            Some(segments) => segments.retire_below(lsn),
            None => Ok(()),
        }
    }

    /// When the segment starting at `first` was last written (none if not installed).
    pub fn segment_modified(&self, first: u64) -> Option<std::time::SystemTime> {
        self.segments.as_ref()?.modified(first)
    }

    /// The installed segments' first LSNs, in order, and the pages each holds (none in memory).
    pub fn segments(&self) -> (Vec<u64>, u64) {
        match &self.segments {
            Some(segments) => (segments.installed(), segments.pages()),
            None => (Vec::new(), 0),
        }
    }

    /// The log's head file, or none for a ring in memory.
    pub fn path(&self) -> Option<&Path> {
        self.segments.as_ref().map(Segments::head_path)
    }

    /// The file that holds (or will hold) page `lsn`, or `<anonymous>`: for error messages.
    pub fn path_of(&self, lsn: u64) -> PathBuf {
        match &self.segments {
            Some(segments) => segments.path_of(lsn),
            None => PathBuf::from("<anonymous>"),
        }
    }

    /// Pointer to the first byte of the slot holding page `lsn`.
    pub fn slot_ptr(&self, lsn: u64) -> *mut u8 {
        let index = (lsn & (self.slots - 1)) as usize;
        // SAFETY: `index < slots`, and the mapping is `slots * PAGE_SIZE` bytes, so the offset
        // stays inside it.
        unsafe { self.base.add(PAGE_SIZE * index) }
    }

    /// The slot of page `lsn` as a page buffer.
    ///
    /// # Safety
    /// No other thread may access the slot's bytes while the returned borrow lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slot_mut(&self, lsn: u64) -> &mut [u8; PAGE_SIZE] {
        // SAFETY: the pointer addresses PAGE_SIZE mapped bytes (see `slot_ptr`), a u8 array has
        // alignment 1, and the caller guarantees exclusive access for the borrow's lifetime.
        unsafe { &mut *self.slot_ptr(lsn).cast::<[u8; PAGE_SIZE]>() }
    }

    /// The slot of page `lsn` for reading.
    ///
    /// # Safety
    /// No thread may write the slot's bytes while the returned borrow lives.
    pub unsafe fn slot(&self, lsn: u64) -> &[u8; PAGE_SIZE] {
        // SAFETY: as in `slot_mut`; the caller guarantees there are no concurrent writers.
        unsafe { &*self.slot_ptr(lsn).cast::<[u8; PAGE_SIZE]>() }
    }

    /// Copies `bytes` into page `lsn`'s payload at `offset`.
    ///
    /// # Safety
    /// The caller must own that byte range (by reservation): no other thread reads or writes it
    /// until the caller publishes it with a Release operation.
    pub unsafe fn write_payload(&self, lsn: u64, offset: usize, bytes: &[u8]) {
        debug_assert!(offset + bytes.len() <= crate::page::PAYLOAD_SIZE);
        // SAFETY: the destination lies inside the slot's payload (asserted above, and guaranteed
        // by the reservation arithmetic), the source is a distinct allocation, and the caller owns
        // the destination range exclusively.
        unsafe {
            let dst = self.slot_ptr(lsn).add(crate::page::HEADER_SIZE + offset);
            std::ptr::copy_nonoverlapping(bytes.as_ptr(), dst, bytes.len());
        }
    }

    /// Writes pages `from..to` (at most `slots` of them), as they stand in the working copy, to
    /// their segments (nothing for a ring in anonymous memory): one `pwrite` per segment the run
    /// touches.
    ///
    /// # Safety
    /// No thread may write those slots' bytes during the call (the pages are finished and not
    /// yet marked ready, or being ingested by the only ingesting thread).
    pub unsafe fn write_through(&self, from: u64, to: u64) -> std::io::Result<()> {
        let Some(segments) = &self.segments else {
            return Ok(());
        };
        debug_assert!(to - from <= self.slots);
        let mut lsn = from;
        while lsn < to {
            let index = lsn & (self.slots - 1);
            let segment_left = segments.pages() - (lsn - segments.first_of(lsn));
            let count = (self.slots - index).min(to - lsn).min(segment_left);
            // SAFETY: slots `index..index + count` are adjacent in the mapping (the run stops at
            // the working copy's end, which is a segment's end too) and nobody writes them during
            // the call, by the caller's contract.
            let bytes = unsafe {
                std::slice::from_raw_parts(self.slot_ptr(lsn), count as usize * PAGE_SIZE)
            };
            segments.write(lsn, bytes)?;
            lsn += count;
        }
        Ok(())
    }

    /// Makes page `lsn`'s slot unrecognisable as a page (zeroes its magic), in the working copy.
    ///
    /// # Safety
    /// No other thread may access the slot (it is below the horizon, or the ring is not shared yet).
    pub unsafe fn invalidate(&self, lsn: u64) {
        // SAFETY: 4 bytes at the start of a mapped slot; exclusive access by the caller's contract.
        unsafe { std::ptr::write_bytes(self.slot_ptr(lsn), 0, 4) }
    }

    /// Records in the head that pages below `lsn` may be overwritten, then retires the segments
    /// wholly below it, unless they are kept as history. Called before their slots are reset, by
    /// one thread at a time (the log holds its horizon lock), so the head's value only grows.
    pub fn persist_released_lsn(&self, lsn: u64) -> std::io::Result<()> {
        let Some(segments) = &self.segments else {
            return Ok(());
        };
        segments.persist_released_lsn(lsn)?;
        if self.keep_history {
            return Ok(());
        }
        segments.retire_below(lsn)
    }

    /// Puts every page written through so far on disk: one `fdatasync` per segment written since
    /// the last sync. A ring in anonymous memory has no file: nothing to sync.
    pub fn sync(&self) -> std::io::Result<()> {
        match &self.segments {
            Some(segments) => segments.sync(),
            None => Ok(()),
        }
    }

    /// Installs the segment after the one holding page `lsn` if it is not there yet, so a
    /// writer crossing into it does not install it on its commit's path.
    pub fn install_ahead(&self, lsn: u64) -> std::io::Result<()> {
        match &self.segments {
            Some(segments) => segments.install_ahead(lsn),
            None => Ok(()),
        }
    }

    /// The log's head path, or `<anonymous>` for a ring in memory: for error messages.
    pub fn path_or_anonymous(&self) -> PathBuf {
        self.path()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("<anonymous>"))
    }

    /// Installs the segment holding page `lsn`, if it is not there yet: where a log that
    /// continues at `lsn` writes first.
    pub fn prepare(&self, lsn: u64) -> std::io::Result<()> {
        match &self.segments {
            Some(segments) => segments.prepare(lsn),
            None => Ok(()),
        }
    }
}

/// Whether `page` is page `lsn` of the log: whole, and in its place.
fn is_page(page: &[u8; PAGE_SIZE], lsn: u64) -> bool {
    matches!(validate(page), Ok(found) if found.lsn() == lsn)
}

/// Finds the log's pages from the persisted horizon, or from `start_min` if that is higher, and
/// reads them into the working copy `map`; see Recovery, in the module docs. Runs before the
/// ring exists.
fn recover(
    map: &mut MmapMut,
    segments: &Segments,
    persisted: u64,
    start_min: u64,
) -> std::io::Result<Recovered> {
    let slots = (map.len() / PAGE_SIZE) as u64;
    let mut start_lsn = persisted.max(start_min);
    let mut page = Box::new([0u8; PAGE_SIZE]);
    let mut end_lsn = start_lsn;
    while segments.read_page(end_lsn, &mut page)? && is_page(&page, end_lsn) {
        end_lsn += 1;
    }
    if end_lsn - start_lsn > slots {
        // The head is behind: a power loss kept an older horizon than the last one written.
        // Never more than a ring of pages is unreleased, so the horizon was at least here.
        tracing::info!(
            head = start_lsn,
            end_lsn,
            "the log's head is behind its pages; recovery keeps the last ring of them"
        );
        start_lsn = end_lsn - slots;
    }
    if start_lsn > persisted {
        tracing::info!(persisted, start_lsn, "ring recovery starts past its head");
        segments.persist_released_lsn(start_lsn)?;
    }
    let mut epoch_max = 0;
    for lsn in start_lsn..end_lsn {
        let index = (lsn % slots) as usize;
        let slot: &mut [u8; PAGE_SIZE] = (&mut map[index * PAGE_SIZE..][..PAGE_SIZE])
            .try_into()
            .expect("a slot is PAGE_SIZE bytes");
        if !segments.read_page(lsn, slot)? {
            return Err(std::io::Error::other(format!(
                "log page {lsn} vanished during recovery"
            )));
        }
        match validate(slot) {
            Ok(page) if page.lsn() == lsn => epoch_max = epoch_max.max(page.header().epoch()),
            _ => {
                return Err(std::io::Error::other(format!(
                    "log page {lsn} changed during recovery"
                )))
            }
        }
    }
    let mut discarded_pages = 0;
    let end_installed = segments.is_installed(end_lsn);
    for first in segments.installed() {
        for lsn in first.max(end_lsn)..first + segments.pages() {
            if !segments.read_page(lsn, &mut page)? {
                break;
            }
            if !is_page(&page, lsn) {
                continue;
            }
            if !end_installed {
                // Pages above a segment that is gone: the head (or `recover_from`) points below
                // a retirement it should have followed. Refuse rather than discard them.
                return Err(std::io::Error::other(format!(
                    "log page {lsn} lies above page {end_lsn}, whose segment is missing"
                )));
            }
            discarded_pages += 1;
            segments.invalidate(lsn)?;
        }
    }
    if discarded_pages > 0 {
        segments.sync()?;
    }
    segments.prepare(end_lsn)?;
    Ok(Recovered {
        start_lsn,
        end_lsn,
        epoch_max,
        discarded_pages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::RingFault;
    use crate::page::{write_page, PageMeta};

    fn put_page(ring: &Ring, lsn: u64) {
        let meta = PageMeta {
            lsn,
            committed_lsn: lsn,
            epoch: 1,
            payload_len: 1,
            first_record_offset: 0,
            record_count: 0,
            end_of_epoch: false,
            resumed: false,
        };
        // SAFETY: the test is the only thread using the ring.
        write_page(unsafe { ring.slot_mut(lsn) }, &meta);
        // SAFETY: as above.
        unsafe { ring.write_through(lsn, lsn + 1) }.unwrap();
    }

    /// A ring of 16 slots: segments of 4 pages.
    fn open(dir: &Path) -> Result<(Ring, Recovered)> {
        Ring::open(dir, 16, None)
    }

    /// Opens the log in `dir`, writes pages `lsns` and closes it.
    fn write_and_close(dir: &Path, lsns: impl IntoIterator<Item = u64>) {
        let (ring, _) = open(dir).unwrap();
        for lsn in lsns {
            put_page(&ring, lsn);
        }
    }

    fn run(recovered: &Recovered) -> (u64, u64) {
        (recovered.start_lsn, recovered.end_lsn)
    }

    #[test]
    fn a_head_cut_off_before_it_was_whole_is_created_anew() {
        let dir = tempfile::tempdir().unwrap();
        // What `probe_lock` leaves, or a crash right after the head's creation.
        std::fs::write(dir.path().join("log.head"), b"").unwrap();
        let (ring, recovered) = open(dir.path()).expect("an empty head opens");
        assert_eq!(run(&recovered), (0, 0));
        put_page(&ring, 0);
        drop(ring);
        let (_, recovered) = open(dir.path()).expect("and has a whole header now");
        assert_eq!(run(&recovered), (0, 1));
        // A head of zeros: sized, never written.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("log.head"), vec![0u8; PAGE_SIZE]).unwrap();
        open(other.path()).expect("a zeroed head opens");
    }

    #[test]
    fn a_foreign_head_and_segments_without_a_head_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("log.head"), vec![7u8; PAGE_SIZE]).unwrap();
        match open(dir.path()) {
            Err(Error::RingFile {
                fault: RingFault::Magic,
                ..
            }) => {}
            other => panic!("expected a bad-magic refusal, got {:?}", other.map(|r| r.1)),
        }

        let dir = tempfile::tempdir().unwrap();
        let (ring, _) = open(dir.path()).unwrap();
        put_page(&ring, 0);
        drop(ring);
        std::fs::remove_file(dir.path().join("log.head")).unwrap();
        match open(dir.path()) {
            Err(Error::RingFile {
                fault: RingFault::Orphans,
                path,
            }) => assert!(path.to_string_lossy().ends_with(".seg"), "{path:?}"),
            other => panic!("expected orphans refused, got {:?}", other.map(|r| r.1)),
        }
    }

    /// Found by the `log_files` fuzz target: a head whose segment size is `u64::MAX` overflowed
    /// the ring size its refusal names.
    #[test]
    fn a_head_of_an_absurd_size_or_horizon_is_refused() {
        for (pages, released) in [(u64::MAX, 0), (4, u64::MAX)] {
            let dir = tempfile::tempdir().unwrap();
            let mut head = vec![0u8; PAGE_SIZE];
            head[..8].copy_from_slice(b"PMLOGHD\x01");
            head[8..12].copy_from_slice(&1u32.to_le_bytes());
            head[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            head[16..24].copy_from_slice(&pages.to_le_bytes());
            let crc = crc32c::crc32c(&head[..24]);
            head[24..28].copy_from_slice(&crc.to_le_bytes());
            head[32..40].copy_from_slice(&released.to_le_bytes());
            std::fs::write(dir.path().join("log.head"), head).unwrap();
            match open(dir.path()) {
                Err(Error::RingFile {
                    fault: RingFault::SlotCount { .. } | RingFault::Horizon { .. },
                    ..
                }) => {}
                other => panic!("expected a refusal, got {:?}", other.map(|r| r.1)),
            }
        }
    }

    /// A file of the old one-file format (`log.ring`, 16 slots): pages 5..12 in their slots,
    /// its horizon at 5, and page 13 finished beyond the gap at 12.
    fn legacy_ring(dir: &Path) {
        let mut bytes = vec![0u8; 17 * PAGE_SIZE];
        let mut header = [0u8; 40];
        header[..8].copy_from_slice(b"PMRING\0\x01");
        header[8..12].copy_from_slice(&1u32.to_le_bytes());
        header[12..16].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        header[16..24].copy_from_slice(&16u64.to_le_bytes());
        let crc = crc32c::crc32c(&header[..24]);
        header[24..28].copy_from_slice(&crc.to_le_bytes());
        header[32..40].copy_from_slice(&5u64.to_le_bytes());
        bytes[..40].copy_from_slice(&header);
        for lsn in (5..12).chain([13]) {
            let meta = PageMeta {
                lsn,
                committed_lsn: lsn,
                epoch: 3,
                payload_len: 1,
                first_record_offset: 0,
                record_count: 0,
                end_of_epoch: false,
                resumed: false,
            };
            let at = PAGE_SIZE * (1 + lsn as usize % 16);
            let slot: &mut [u8; PAGE_SIZE] = (&mut bytes[at..at + PAGE_SIZE]).try_into().unwrap();
            write_page(slot, &meta);
        }
        std::fs::write(dir.join("log.ring"), bytes).unwrap();
    }

    #[test]
    fn a_log_of_the_old_one_file_format_is_converted_to_segments() {
        let dir = tempfile::tempdir().unwrap();
        legacy_ring(dir.path());
        let (ring, recovered) = open(dir.path()).expect("converted");
        assert_eq!(run(&recovered), (5, 12));
        assert_eq!(recovered.epoch_max, 3);
        assert!(
            !dir.path().join("log.ring").exists(),
            "removed once converted"
        );
        put_page(&ring, 12);
        drop(ring);
        let (_, recovered) = open(dir.path()).unwrap();
        assert_eq!(
            run(&recovered),
            (5, 13),
            "page 13 of the old file never came back"
        );

        // A conversion a crash cut off: segments written, the head not yet. It starts again.
        let dir = tempfile::tempdir().unwrap();
        legacy_ring(dir.path());
        std::fs::write(dir.path().join("log.head"), b"").unwrap();
        std::fs::write(dir.path().join("log-0000000000000004.seg"), [9u8; 100]).unwrap();
        let (_, recovered) = open(dir.path()).expect("converted after the cut");
        assert_eq!(run(&recovered), (5, 12));
    }

    #[test]
    fn pages_stay_in_their_segments_and_retired_segments_are_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (ring, _) = open(dir.path()).unwrap();
        // A new log installs the segment it starts in; the writes install the rest.
        assert_eq!(ring.segments.as_ref().unwrap().installed(), [0]);
        for lsn in 0..16 {
            put_page(&ring, lsn);
        }
        ring.persist_released_lsn(2).unwrap();
        for lsn in 16..18 {
            put_page(&ring, lsn);
        }
        // Page 1 is still in segment 0, though its slot holds page 17.
        let (segments, mut page) = (ring.segments.as_ref().unwrap(), [0u8; PAGE_SIZE]);
        assert!(segments.read_page(1, &mut page).unwrap());
        assert_eq!(validate(&page).unwrap().lsn(), 1);
        ring.persist_released_lsn(8).unwrap();
        assert!(!dir.path().join("log-0000000000000000.seg").exists());
        let spares = || {
            (std::fs::read_dir(dir.path()).unwrap())
                .filter(|e| {
                    e.as_ref()
                        .unwrap()
                        .file_name()
                        .to_string_lossy()
                        .contains("spare")
                })
                .count()
        };
        assert_eq!(spares(), 2, "segments 0 and 4 are kept for reuse");
        drop(ring);

        let (ring, recovered) = open(dir.path()).unwrap();
        assert_eq!(run(&recovered), (8, 18));
        for lsn in 18..22 {
            put_page(&ring, lsn);
        }
        // Segment 20 took a spare's file: its old pages never read as pages 20..24.
        assert_eq!(spares(), 1);
        ring.persist_released_lsn(20).unwrap();
        drop(ring);
        let (_, recovered) = open(dir.path()).unwrap();
        assert_eq!(run(&recovered), (20, 22));
    }

    #[test]
    fn a_head_more_than_a_ring_behind_keeps_the_last_ring_of_pages() {
        let dir = tempfile::tempdir().unwrap();
        // Forty pages and no horizon persisted: the head says 0, as a stale one after a power
        // loss.
        write_and_close(dir.path(), 0..40);
        let (_, recovered) = open(dir.path()).unwrap();
        assert_eq!(run(&recovered), (24, 40), "the ring holds sixteen pages");
        assert_eq!(recovered.discarded_pages, 0, "nothing after the end");
    }

    #[test]
    fn pages_above_a_missing_segment_are_refused_not_discarded() {
        let dir = tempfile::tempdir().unwrap();
        write_and_close(dir.path(), 0..6);
        std::fs::remove_file(dir.path().join("log-0000000000000000.seg")).unwrap();
        match open(dir.path()) {
            Err(Error::Io { source, .. }) => {
                assert!(
                    source.to_string().contains("segment is missing"),
                    "{source}"
                )
            }
            other => panic!("expected a refusal, got {:?}", other.map(|r| r.1)),
        }
        assert!(
            dir.path().join("log-0000000000000004.seg").is_file(),
            "pages 4 and 5 are kept"
        );
    }

    /// A writer that finishes a page of a later segment first installs the ones before it, so a
    /// kill never leaves a segment installed above a missing one that was never retired (which
    /// recovery refuses: see the next test).
    #[test]
    fn segments_are_installed_in_order_whoever_writes_first() {
        let dir = tempfile::tempdir().unwrap();
        let (ring, _) = open(dir.path()).unwrap();
        put_page(&ring, 9);
        assert_eq!(ring.segments.as_ref().unwrap().installed(), [0, 4, 8]);
        drop(ring);
        let (_, recovered) = open(dir.path()).unwrap();
        assert_eq!(run(&recovered), (0, 0));
        assert_eq!(
            recovered.discarded_pages, 1,
            "page 9 lay beyond the first gap"
        );
    }

    #[test]
    fn the_next_segment_is_installed_ahead_from_the_middle_of_the_current_one() {
        let dir = tempfile::tempdir().unwrap();
        let (ring, _) = open(dir.path()).unwrap();
        let next = dir.path().join("log-0000000000000004.seg");
        assert!(
            !next.exists(),
            "a new log installs the segment it starts in"
        );
        ring.install_ahead(1).unwrap();
        assert!(!next.exists(), "not before the middle of segment 0");
        ring.install_ahead(2).unwrap();
        assert!(next.is_file());
    }

    #[test]
    fn a_finished_page_beyond_the_first_gap_is_invalidated_in_its_segment() {
        let dir = tempfile::tempdir().unwrap();
        write_and_close(dir.path(), [0, 1, 3]);
        let (ring, recovered) = open(dir.path()).unwrap();
        assert_eq!(run(&recovered), (0, 2));
        assert_eq!(recovered.discarded_pages, 1);
        // The log continues at 2: page 3 must not come back as its successor.
        put_page(&ring, 2);
        drop(ring);
        let (_, recovered) = open(dir.path()).unwrap();
        assert_eq!(run(&recovered), (0, 3));
        assert_eq!(recovered.discarded_pages, 0);
    }
}
