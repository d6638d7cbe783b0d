//! The anchor: where the next reservation starts, as one 128-bit word.
//!
//! ```text
//! bits 64..128  lsn     the open page: the lowest page not yet sealed
//! bits  0..64   offset  bytes reserved in the open page, 0..PAYLOAD_SIZE (never PAYLOAD_SIZE:
//!                       a page that fills up is sealed by the same CAS, which moves to lsn + 1)
//! ```
//!
//! Every change is one compare-and-swap of the whole word, so `lsn` and `offset` always agree:
//!
//! - `reserve(n)` moves `(lsn, offset)` to the position `n` bytes later, possibly many pages on.
//!   Every page it moves past is *sealed* by that CAS: its length is final (`PAYLOAD_SIZE`).
//! - `seal()` moves `(lsn, offset > 0)` to `(lsn + 1, 0)`, sealing the open page at `offset` bytes.
//!
//! A failed CAS means another thread's succeeded; the loser retries from the value it got back.
//! No lock is taken, and a large reservation is one CAS like a small one, so the reservations after
//! it proceed at once. Orderings are `SeqCst`: on x86-64 `lock cmpxchg16b` is a full barrier
//! anyway, and the seal policy (`seal.rs`) relies on the anchor taking part in the single total
//! order together with the consumer counters.

use crossbeam_utils::CachePadded;

use crate::page::PAYLOAD_SIZE;
use crate::sync::{AtomicU128, Ordering};

/// A position in the log: a page and a byte offset in its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    /// Page LSN.
    pub lsn: u64,
    /// Byte offset in the page payload, `0..PAYLOAD_SIZE`.
    pub offset: u64,
}

impl Position {
    fn pack(self) -> u128 {
        (u128::from(self.lsn) << 64) | u128::from(self.offset)
    }

    fn unpack(word: u128) -> Self {
        Self {
            lsn: (word >> 64) as u64,
            offset: word as u64,
        }
    }

    /// The position `bytes` bytes after this one.
    pub fn advance(self, bytes: u64) -> Self {
        let end = self.offset + bytes;
        Self {
            lsn: self.lsn + end / PAYLOAD_SIZE as u64,
            offset: end % PAYLOAD_SIZE as u64,
        }
    }
}

/// The span of pages a reservation covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Span {
    /// Where the reservation starts.
    pub start: Position,
    /// Where the anchor stands after it (the next reservation's start).
    pub end: Position,
}

impl Span {
    /// The last page holding a byte of the reservation.
    pub fn last_lsn(&self) -> u64 {
        if self.end.offset == 0 {
            self.end.lsn - 1
        } else {
            self.end.lsn
        }
    }

    /// Where the reservation ends within its last page (`PAYLOAD_SIZE` if it fills it).
    pub fn end_offset_in(&self, last_lsn: u64) -> u64 {
        if last_lsn == self.end.lsn {
            self.end.offset
        } else {
            PAYLOAD_SIZE as u64
        }
    }

    /// Bytes of the reservation that fall in page `lsn` (which must be in the span).
    pub fn bytes_in(&self, lsn: u64) -> u64 {
        let from = if lsn == self.start.lsn {
            self.start.offset
        } else {
            0
        };
        let to = if lsn == self.end.lsn {
            self.end.offset
        } else {
            PAYLOAD_SIZE as u64
        };
        to - from
    }
}

/// The anchor word, alone on its cache line.
pub(crate) struct Anchor {
    word: CachePadded<AtomicU128>,
}

impl Anchor {
    pub fn new(at: Position) -> Self {
        Self {
            word: CachePadded::new(AtomicU128::new(at.pack())),
        }
    }

    pub fn load(&self) -> Position {
        Position::unpack(self.word.load(Ordering::SeqCst))
    }

    /// Moves the anchor from `current` to `new`; on failure returns the anchor's actual value.
    pub fn compare_exchange(&self, current: Position, new: Position) -> Result<(), Position> {
        self.word
            .compare_exchange_weak(
                current.pack(),
                new.pack(),
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .map(drop)
            .map_err(Position::unpack)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: u64 = PAYLOAD_SIZE as u64;

    #[test]
    fn a_reservation_that_fills_a_page_exactly_moves_to_the_next() {
        let start = Position {
            lsn: 3,
            offset: P - 10,
        };
        let span = Span {
            start,
            end: start.advance(10),
        };
        assert_eq!(span.end, Position { lsn: 4, offset: 0 });
        assert_eq!(span.last_lsn(), 3);
        assert_eq!(span.bytes_in(3), 10);
    }

    #[test]
    fn a_long_reservation_covers_whole_pages_between_its_ends() {
        let start = Position {
            lsn: 0,
            offset: 100,
        };
        let span = Span {
            start,
            end: start.advance(3 * P),
        };
        assert_eq!(
            span.end,
            Position {
                lsn: 3,
                offset: 100
            }
        );
        assert_eq!(span.last_lsn(), 3);
        let total: u64 = (0..=3).map(|lsn| span.bytes_in(lsn)).sum();
        assert_eq!(total, 3 * P);
        assert_eq!(span.bytes_in(1), P);
    }

    #[test]
    fn the_word_round_trips() {
        let anchor = Anchor::new(Position {
            lsn: u64::MAX - 1,
            offset: 4047,
        });
        assert_eq!(
            anchor.load(),
            Position {
                lsn: u64::MAX - 1,
                offset: 4047
            }
        );
        let new = Position { lsn: 7, offset: 1 };
        assert_eq!(anchor.compare_exchange(new, new), Err(anchor.load()));
    }
}
