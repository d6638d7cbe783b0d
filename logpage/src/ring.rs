//! The ring file: a header page and `slots` page slots, memory-mapped.
//!
//! ```text
//! file offset            content
//! 0                      ring header (below), rest of the page zero
//! PAGE_SIZE * (1 + i)    slot i: holds page lsn with lsn % slots == i
//! ```
//!
//! Ring header, little-endian:
//!
//! ```text
//! offset size field
//!      0    8 magic          "PMRING\0\x01"
//!      8    4 version        RING_VERSION
//!     12    4 page_size      PAGE_SIZE
//!     16    8 slots          number of page slots, a power of two
//!     24    4 crc32c         over bytes 0..24
//!     28    4 reserved       zero
//!     32    8 released_lsn   pages below this may have been overwritten (not under the crc:
//!                            rewritten in place each time the ring's horizon advances)
//! ```
//!
//! # Writes: a working copy in memory, whole pages to the file
//!
//! Writers and readers use a working copy of the slots in anonymous memory. The file is mapped
//! only while the ring is opened (creation and recovery); after that, each page reaches the file
//! whole, with one `pwrite` by the thread that finishes it (`Ring::write_through`), *before* the
//! committed watermark passes it: so a *process* crash loses nothing below the watermark, the
//! kernel's page cache holds it. A *power loss* keeps only what a completed sync put on disk:
//! the log's durable watermark (`durable.rs`) says which pages those are, and that module's docs
//! say what recovery finds after each kind of crash. `Ring::sync` is one `fdatasync` of the
//! file; `durable.rs` says why that call and not a ranged one.
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
//! large as the ring (it replaces the mapping in the process's resident set).
//!
//! A slot in the file is therefore only ever replaced by a whole finished page: the slots the
//! horizon passes are invalidated in the working copy only (see Recovery for why the file's old
//! pages never read as part of the log).
//!
//! # Recovery
//!
//! On open, every slot is validated (magic, fields, crc) and kept only if its LSN maps to it. The
//! recovered run starts at `released_lsn` (the horizon is persisted *before* any slot below it is
//! reset, so every page from there up to the committed watermark is still intact) and extends
//! upward to the first page that is missing, torn or never finished: that gap is the end of the
//! log, and any finished page beyond it (pages finish out of order) was never below the committed
//! watermark, so it is discarded. Every page outside the run is invalidated (its magic zeroed),
//! so a later recovery can never mistake it for part of the log.
//!
//! The horizon argument holds after a *process* crash, where the page cache keeps every store.
//! After a power loss the header on disk is the one the last completed sync wrote, and may be
//! older than slots that writeback reused since: `durable.rs` (Power loss) says what that means
//! and what the store must pass in.
//!
//! Zeroed slots (a new ring, or slots nothing was written to yet) fail validation on their magic,
//! so recovery never mistakes one for a page: a zeroed slot is the end of the log, like a torn one.
//!
//! # Space
//!
//! The file's blocks are allocated (`posix_fallocate`) every time it is opened, before it is
//! mapped. A sparse ring would be the one place where a full disk is not an error: a store into a
//! mapped page whose block cannot be allocated raises SIGBUS, which kills the process. Allocated
//! up front, a full disk shows up as a clear error from `Ring::open` instead, and every later
//! write lands in blocks the file already owns (the mapping is gone once the ring is open, but
//! a `pwrite` that could fail for space would poison the log in the middle of a commit).
//!
//! A new ring's slots are then written once, with zeros, through the mapping, and synced with
//! the header. Blocks that were only fallocated are *unwritten extents*: the first sync over each
//! one converts it, a metadata commit on top of the data write. Measured here (ext4, 4 KB written
//! through the mapping, then `fdatasync`, p50): 1.4–2.1× slower over fallocated-only blocks than
//! over written ones (1.42× and 1.64× in two runs of `benches/durable.rs`, group
//! `durable/ring-blocks`). The zeros go through the mapping rather than through `write(2)`,
//! because the page cache keeps what `write` creates as large folios and dirty tracking through a
//! mapping is per folio: each later 4 KB store then dirtied a whole folio and every sync wrote it
//! all back, 5.9× and 24.9× the cost of syncing the page in the same two runs. Rings created
//! before this write keep their unwritten extents until each slot's first sync converts it: one
//! lap of the ring.
//!
//! A file of the right size whose header is not whole (bad magic or crc) and whose slots are all
//! zeros is a creation that a crash cut off between sizing the file and writing its header: it
//! holds no page, so it is created anew. A bad header over any non-zero slot byte is refused.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};

use bytemuck::{Pod, Zeroable};
use memmap2::MmapMut;

use crate::error::{Error, Result, RingFault};
use crate::page::{validate, U32Le, U64Le, PAGE_SIZE};

const RING_MAGIC: [u8; 8] = *b"PMRING\0\x01";
const RING_VERSION: u32 = 1;
const RELEASED_LSN_OFFSET: usize = 32;

#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct RingHeader {
    magic: [u8; 8],
    version: U32Le,
    page_size: U32Le,
    slots: U64Le,
    crc: U32Le,
    reserved: U32Le,
    released_lsn: U64Le,
}
const _: () = assert!(std::mem::size_of::<RingHeader>() == RELEASED_LSN_OFFSET + 8);
const _: () = assert!(std::mem::offset_of!(RingHeader, released_lsn) == RELEASED_LSN_OFFSET);
const CRC_COVERED: usize = std::mem::offset_of!(RingHeader, crc);

impl RingHeader {
    fn new(slots: u64) -> Self {
        let mut header = Self {
            magic: RING_MAGIC,
            version: U32Le::new(RING_VERSION),
            page_size: U32Le::new(PAGE_SIZE as u32),
            slots: U64Le::new(slots),
            crc: U32Le::new(0),
            reserved: U32Le::new(0),
            released_lsn: U64Le::new(0),
        };
        header.crc = U32Le::new(crc32c::crc32c(&bytemuck::bytes_of(&header)[..CRC_COVERED]));
        header
    }

    /// Whether the header was written whole: its magic, and its crc over the fields it covers.
    fn is_whole(&self) -> bool {
        self.magic == RING_MAGIC
            && crc32c::crc32c(&bytemuck::bytes_of(self)[..CRC_COVERED]) == self.crc.get()
    }

    fn check(&self, slots: u64) -> std::result::Result<(), RingFault> {
        if self.magic != RING_MAGIC {
            return Err(RingFault::Magic);
        }
        if self.version.get() != RING_VERSION {
            return Err(RingFault::Version {
                found: self.version.get(),
                supported: RING_VERSION,
            });
        }
        if crc32c::crc32c(&bytemuck::bytes_of(self)[..CRC_COVERED]) != self.crc.get() {
            return Err(RingFault::Checksum);
        }
        if self.page_size.get() as usize != PAGE_SIZE || self.slots.get() != slots {
            return Err(RingFault::SlotCount {
                found: self.slots.get(),
                configured: slots,
            });
        }
        Ok(())
    }
}

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

/// The slots' working copy and the file behind it.
pub(crate) struct Ring {
    /// The file's mapping while the ring is opened; the working copy in anonymous memory after.
    map: MmapMut,
    /// Base of `map`. Writers copy into disjoint byte ranges through it; see `Log`.
    base: *mut u8,
    slots: u64,
    path: Option<PathBuf>,
    file: Option<File>,
}

// SAFETY: `Ring` is a mapping plus its base pointer. The pointer is only dereferenced through the
// methods below, whose callers (the log) guarantee that no two threads write the same byte range
// concurrently and that a range is read only after its writers' stores were published (Release
// on the slot's accounting word or ready tag, Acquire by the reader). The mapping itself is owned
// and outlives every use, since the `Ring` is dropped only with the log's shared state.
unsafe impl Send for Ring {}
// SAFETY: as for `Send`: all shared access goes through the disjoint-range discipline above.
unsafe impl Sync for Ring {}

/// Allocates the blocks of `file`'s first `len` bytes (see Space, in the module docs).
fn allocate(file: &std::fs::File, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let len =
        libc::off_t::try_from(len).map_err(|_| std::io::Error::from_raw_os_error(libc::EFBIG))?;
    // SAFETY: posix_fallocate takes a descriptor and two integers, no pointers; `file` is open
    // (borrowed for the call), so the descriptor is valid.
    match unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len) } {
        0 => Ok(()),
        // Returns the error number itself; glibc falls back to writing where the filesystem
        // lacks fallocate, so EOPNOTSUPP/EINVAL mean neither way is possible: the ring stays
        // sparse, as it would be on any system without the call.
        libc::EOPNOTSUPP | libc::EINVAL => Ok(()),
        errno => Err(std::io::Error::from_raw_os_error(errno)),
    }
}

impl Ring {
    /// Opens (or creates) `dir/log.ring` with `slots` slots and recovers its pages, from
    /// `recover_from` if that is above the persisted horizon.
    pub fn open(dir: &Path, slots: u64, recover_from: Option<u64>) -> Result<(Self, Recovered)> {
        let path = dir.join("log.ring");
        let io = |op: &'static str| {
            let path = path.clone();
            move |source| Error::Io { op, path, source }
        };
        std::fs::create_dir_all(dir).map_err(io("create directory for"))?;
        let file = open_locked(&path)?;
        let expected_len = (slots + 1) * PAGE_SIZE as u64;
        let len = file.metadata().map_err(io("stat"))?.len();
        let fresh = len == 0;
        if fresh {
            file.set_len(expected_len).map_err(io("size"))?;
        } else if len != expected_len {
            let mut header = RingHeader::zeroed();
            let head = read_prefix(&file, bytemuck::bytes_of_mut(&mut header));
            let fault = match head.and_then(|()| header.check(slots).err().ok_or(())) {
                Ok(fault) => fault,
                Err(()) => RingFault::Length {
                    found: len,
                    expected: expected_len,
                },
            };
            return Err(Error::RingFile { path, fault });
        }
        allocate(&file, expected_len).map_err(io("allocate disk space for"))?;
        // SAFETY: the file is open read-write, sized to `expected_len`, and locked against other
        // pagemesh processes for as long as `Ring` holds it; nothing truncates it while mapped.
        let map = unsafe { MmapMut::map_mut(&file) }.map_err(io("map"))?;
        let mut ring = Self::from_map(map, slots, Some(path.clone()), Some(file));
        // Creation sizes the file, then writes the header: a crash in between leaves a header
        // that is not whole over slots that are all zeros. Such a file holds no page: create anew.
        let fresh = fresh || ring.is_cut_off_creation();
        if fresh {
            // Write every slot's blocks once (see Space); the sync below covers them.
            ring.map[PAGE_SIZE..].fill(0);
            ring.header_page_mut()[..std::mem::size_of::<RingHeader>()]
                .copy_from_slice(bytemuck::bytes_of(&RingHeader::new(slots)));
            ring.map.flush().map_err(io("sync new"))?;
        } else {
            let header: &RingHeader =
                bytemuck::from_bytes(&ring.header_page_mut()[..std::mem::size_of::<RingHeader>()]);
            header.check(slots).map_err(|fault| Error::RingFile {
                path: path.clone(),
                fault,
            })?;
        }
        let recovered = ring
            .recover(recover_from.unwrap_or(0))
            .map_err(io("recover"))?;
        ring.stage().map_err(io("copy into memory the pages of"))?;
        Ok((ring, recovered))
    }

    /// Swaps the file's mapping for a working copy of it in anonymous memory, and unmaps the
    /// file (see Writes, in the module docs). What recovery wrote through the mapping stays in
    /// the page cache, dirty, for the next sync.
    fn stage(&mut self) -> std::io::Result<()> {
        let mut stage = MmapMut::map_anon(self.map.len())?;
        stage.copy_from_slice(&self.map);
        self.base = stage.as_mut_ptr();
        self.map = stage;
        Ok(())
    }

    /// Takes and releases the lock of `dir/log.ring` (creating it empty if missing); see
    /// [`crate::Log::probe_lock`].
    pub fn probe_lock(dir: &Path) -> Result<()> {
        open_locked(&dir.join("log.ring")).map(drop)
    }

    /// A ring in anonymous memory: nothing survives the process. For tests and benchmarks.
    pub fn anonymous(slots: u64) -> Result<(Self, Recovered)> {
        let len = (slots + 1) as usize * PAGE_SIZE;
        let map = MmapMut::map_anon(len).map_err(|source| Error::Io {
            op: "map anonymous ring",
            path: PathBuf::from("<anonymous>"),
            source,
        })?;
        let ring = Self::from_map(map, slots, None, None);
        let recovered = Recovered {
            start_lsn: 0,
            end_lsn: 0,
            epoch_max: 0,
            discarded_pages: 0,
        };
        Ok((ring, recovered))
    }

    fn from_map(mut map: MmapMut, slots: u64, path: Option<PathBuf>, file: Option<File>) -> Self {
        let base = map.as_mut_ptr();
        Self {
            map,
            base,
            slots,
            path,
            file,
        }
    }

    /// Whether this is a file whose creation a crash cut off: sized, but its header not whole and
    /// every slot still zero. (A ring that was ever used has a whole header, and a foreign file
    /// has non-zero bytes past its first page: both are refused by the header check instead.)
    fn is_cut_off_creation(&self) -> bool {
        let header: &RingHeader =
            bytemuck::from_bytes(&self.map[..std::mem::size_of::<RingHeader>()]);
        !header.is_whole() && self.map[PAGE_SIZE..].iter().all(|&byte| byte == 0)
    }

    fn header_page_mut(&mut self) -> &mut [u8] {
        &mut self.map[..PAGE_SIZE]
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// Pointer to the first byte of the slot holding page `lsn`.
    pub fn slot_ptr(&self, lsn: u64) -> *mut u8 {
        let index = (lsn & (self.slots - 1)) as usize;
        // SAFETY: `index < slots`, and the mapping is `(slots + 1) * PAGE_SIZE` bytes, so the
        // offset stays inside it.
        unsafe { self.base.add(PAGE_SIZE * (1 + index)) }
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
    /// their slots in the file (nothing for a ring in anonymous memory): one `pwrite` for the
    /// run, two where it wraps.
    ///
    /// # Safety
    /// No thread may write those slots' bytes during the call (the pages are finished and not
    /// yet marked ready, or being ingested by the only ingesting thread).
    pub unsafe fn write_through(&self, from: u64, to: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let Some(file) = &self.file else {
            return Ok(());
        };
        debug_assert!(to - from <= self.slots);
        let mut lsn = from;
        while lsn < to {
            let index = lsn & (self.slots - 1);
            let count = (self.slots - index).min(to - lsn);
            // SAFETY: slots `index..index + count` are adjacent in the mapping (the run stops at
            // the ring's end) and nobody writes them during the call, by the caller's contract.
            let bytes = unsafe {
                std::slice::from_raw_parts(self.slot_ptr(lsn), count as usize * PAGE_SIZE)
            };
            file.write_all_at(bytes, PAGE_SIZE as u64 * (1 + index))?;
            lsn += count;
        }
        Ok(())
    }

    /// Makes page `lsn`'s slot unrecognisable as a page (zeroes its magic), in the working copy
    /// (and in the file while the ring is being opened).
    ///
    /// # Safety
    /// No other thread may access the slot (it is below the horizon, or the ring is not shared yet).
    pub unsafe fn invalidate(&self, lsn: u64) {
        // SAFETY: 4 bytes at the start of a mapped slot; exclusive access by the caller's contract.
        unsafe { std::ptr::write_bytes(self.slot_ptr(lsn), 0, 4) }
    }

    /// Records in the file that pages below `lsn` may be overwritten. Called before their slots
    /// are reset, by one thread at a time (the log holds its horizon lock), so the file's value
    /// only grows.
    pub fn persist_released_lsn(&self, lsn: u64) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        // Only recovery reads the header, and from the file: the working copy's stays stale.
        let Some(file) = &self.file else {
            return Ok(());
        };
        file.write_all_at(&lsn.to_le_bytes(), RELEASED_LSN_OFFSET as u64)
    }

    /// Puts every page written through so far on disk: one `fdatasync` of the ring file, which
    /// writes back the file's dirty pages and flushes the device cache. A ring in anonymous
    /// memory has no file: nothing to sync.
    pub fn sync(&self) -> std::io::Result<()> {
        match &self.file {
            Some(file) => file.sync_data(),
            None => Ok(()),
        }
    }

    /// The ring file's path, or `<anonymous>` for a ring in memory: for error messages.
    pub fn path_or_anonymous(&self) -> PathBuf {
        self.path
            .clone()
            .unwrap_or_else(|| PathBuf::from("<anonymous>"))
    }

    /// Scans the slots from the persisted horizon, or from `start_min` if that is higher; see
    /// the module docs. Runs before the ring is shared.
    fn recover(&mut self, start_min: u64) -> std::io::Result<Recovered> {
        let mut released = [0u8; 8];
        released.copy_from_slice(&self.map[RELEASED_LSN_OFFSET..RELEASED_LSN_OFFSET + 8]);
        let persisted = u64::from_le_bytes(released);
        let start_lsn = persisted.max(start_min);
        if start_lsn > persisted {
            tracing::info!(persisted, start_lsn, "ring recovery starts past its header");
            self.persist_released_lsn(start_lsn)?;
        }
        let mut end_lsn = start_lsn;
        let mut epoch_max = 0;
        let mut discarded_pages = 0;
        while end_lsn - start_lsn < self.slots {
            // SAFETY: the ring is not shared yet (`&mut self`), so nothing else touches the slot.
            let page = unsafe { self.slot(end_lsn) };
            match validate(page) {
                Ok(page) if page.lsn() == end_lsn => {
                    epoch_max = epoch_max.max(page.header().epoch())
                }
                _ => break,
            }
            end_lsn += 1;
        }
        for index in 0..self.slots {
            // SAFETY: as above; and `index` maps to slot `index` itself.
            let page = unsafe { self.slot(index) };
            let keep = match validate(page) {
                Ok(page) => (start_lsn..end_lsn).contains(&page.lsn()),
                Err(_) => continue,
            };
            if !keep {
                discarded_pages += 1;
                // SAFETY: exclusive access, as above.
                unsafe { self.invalidate(index) };
            }
        }
        Ok(Recovered {
            start_lsn,
            end_lsn,
            epoch_max,
            discarded_pages,
        })
    }
}

fn read_prefix(file: &File, buf: &mut [u8]) -> std::result::Result<(), ()> {
    use std::os::unix::fs::FileExt;
    file.read_exact_at(buf, 0).map_err(drop)
}

/// Opens (creating it empty if missing) and locks the ring file at `path`. The lock is an
/// `flock` on an open file description, and a process that forks (a thread of this process
/// spawning a child, say) holds a copy of every descriptor until the child's exec closes it, so
/// a ring this process just closed can look locked for that moment: a held lock is retried for
/// up to 50 ms before it is taken to belong to someone else.
fn open_locked(path: &Path) -> Result<File> {
    let io = |op: &'static str| {
        move |source| Error::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io("open"))?;
    for attempt in 0..=10 {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if attempt < 10 => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(TryLockError::WouldBlock) => break,
            Err(TryLockError::Error(source)) => return Err(io("lock")(source)),
        }
    }
    Err(Error::RingFile {
        path: path.to_path_buf(),
        fault: RingFault::Locked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring_file(dir: &Path, slots: u64) -> PathBuf {
        let path = dir.join("log.ring");
        std::fs::write(&path, vec![0u8; (slots as usize + 1) * PAGE_SIZE]).unwrap();
        path
    }

    #[test]
    fn a_creation_cut_off_before_or_during_the_header_is_created_anew() {
        let dir = tempfile::tempdir().unwrap();
        // Sized, header not yet written: what a crash right after `set_len` leaves.
        ring_file(dir.path(), 16);
        let (ring, recovered) = Ring::open(dir.path(), 16, None).expect("sized zero file opens");
        assert_eq!((recovered.start_lsn, recovered.end_lsn), (0, 0));
        drop(ring);
        Ring::open(dir.path(), 16, None).expect("and has a whole header now");
        // Half a header.
        let path = ring_file(dir.path(), 16);
        let header = RingHeader::new(16);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[..12].copy_from_slice(&bytemuck::bytes_of(&header)[..12]);
        std::fs::write(&path, bytes).unwrap();
        Ring::open(dir.path(), 16, None).expect("a torn header over empty slots opens");
    }

    #[test]
    fn a_bad_header_over_written_slots_is_still_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = ring_file(dir.path(), 16);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[PAGE_SIZE + 100] = 1;
        std::fs::write(&path, bytes).unwrap();
        match Ring::open(dir.path(), 16, None) {
            Err(Error::RingFile {
                fault: RingFault::Magic,
                ..
            }) => {}
            other => panic!("expected a bad-magic refusal, got {:?}", other.map(|r| r.1)),
        }
    }
}
