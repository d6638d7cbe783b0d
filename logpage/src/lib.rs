//! pagemesh's replication log: a lock-free ring of 4 KB pages.
//!
//! Many threads append *records* (one transaction's bytes each) concurrently:
//!
//! 1. **reserve**: one compare-and-swap of the 128-bit anchor `{lsn, offset}` claims the bytes,
//!    possibly across many pages ([`anchor`]);
//! 2. **write**: the reserver copies its bytes into the ring's memory-mapped slots, with no lock;
//! 3. **commit**: it adds its byte count to each touched page's accounting word ([`seal`]).
//!
//! A page is *ready* once it is sealed (the anchor moved past it) and fully committed; the thread
//! that completes it writes its header and crc ([`page`]). The committed watermark is the first
//! page not yet ready. [`Cursor`]s read ready pages in order, without copying, and release them
//! so the [`ring`] can reuse their slots. [`RecordReader`] turns pages back into records
//! ([`record`]).
//!
//! Partial pages are sealed by whoever needs them shipped: idle consumers, and waiters when no
//! consumer is busy. Under load pages fill up by themselves and each group is what was committed
//! while the previous one was being consumed (group commit; see [`seal`]).
//!
//! The log knows nothing of LMDB or sockets: the store and the network each own cursors.
//!
//! ```
//! use pagemesh_logpage::{Log, LogOptions, RecordReader};
//!
//! let log = Log::in_memory(LogOptions::new().slots(16))?;
//! let mut cursor = log.cursor(0)?;
//! std::thread::scope(|s| {
//!     for t in 0..4u8 {
//!         let log = &log;
//!         s.spawn(move || log.append(&[t; 100]).map(drop));
//!     }
//! });
//! log.seal();
//! let (mut reader, mut records) = (RecordReader::new(), 0);
//! while let Some(page) = cursor.next_ready()? {
//!     reader.feed(page, |record| {
//!         assert_eq!(record.bytes.len(), 100);
//!         records += 1;
//!     })?;
//! }
//! assert_eq!(records, 4);
//! # Ok::<(), pagemesh_logpage::Error>(())
//! ```

#![deny(unsafe_op_in_unsafe_fn)]

pub mod anchor;
mod cursor;
mod durable;
mod error;
mod history;
mod log;
pub mod page;
pub mod record;
pub mod ring;
pub mod seal;
mod segment;
mod sync;

pub use anchor::Position;
pub use cursor::{Backlog, Cursor, PageRun};
pub use durable::Flusher;
pub use error::{Error, RecordFault, Result, RingFault};
pub use history::{HistoryPage, HistoryReader, OwnedPage};
pub use log::{CommitPos, Ingested, Log, LogOptions, Reservation};
pub use page::{validate, PageFlags, PageHeader, PageMeta, PageRef, PAGE_SIZE, PAYLOAD_SIZE};
pub use record::{Record, RecordReader, RECORD_HEADER_SIZE};
pub use ring::Recovered;
