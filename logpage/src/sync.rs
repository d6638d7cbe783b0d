//! The one place that picks atomics, locks and threads.
//!
//! Every other module imports its synchronisation primitives from here, so the shuttle model tests
//! (`--features shuttle`, see `tests/shuttle.rs`) run the real log code on shuttle's scheduler.
//! Nothing else in the crate names `std::sync::atomic`, `std::thread`, `portable_atomic` or `shuttle`
//! directly (the flusher's thread comes from here too, so shuttle schedules it).
//!
//! `AtomicU128` comes from portable-atomic: it is lock-free on x86-64 through `cmpxchg16b`
//! (detected at run time) and on aarch64 through `casp`/LL-SC. crossbeam's `AtomicCell<u128>` is
//! *not* lock-free (it falls back to a striped lock), so it must not be used for the anchor.

#[cfg(not(feature = "shuttle"))]
pub(crate) use portable_atomic::AtomicU128;
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::sync::{
    Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
#[cfg(not(feature = "shuttle"))]
pub(crate) use std::thread;

#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::atomic::{
    AtomicBool, AtomicU128, AtomicU32, AtomicU64, AtomicUsize, Ordering,
};
#[cfg(feature = "shuttle")]
pub(crate) use shuttle::sync::{
    Arc, Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard,
};
#[cfg(feature = "shuttle")]
pub(crate) use shuttle::thread;

/// Whether the anchor's 128-bit compare-and-swap is lock-free on this host.
///
/// Under shuttle the question is moot (shuttle serialises everything), so it answers `true`.
pub(crate) fn anchor_is_lock_free() -> bool {
    #[cfg(not(feature = "shuttle"))]
    {
        portable_atomic::AtomicU128::is_lock_free()
    }
    #[cfg(feature = "shuttle")]
    {
        true
    }
}

/// Locks `mutex`, ignoring poisoning.
///
/// Every mutex in this crate guards either `()` (it only orders a condition check against a
/// notification) or state that each critical section leaves consistent before it can panic, so a
/// panic elsewhere never leaves something half-updated behind the lock.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes `rwlock` for reading, ignoring poisoning (see [`lock`]).
pub(crate) fn read_lock<T>(rwlock: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    rwlock
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Takes `rwlock` for writing, ignoring poisoning (see [`lock`]).
pub(crate) fn write_lock<T>(rwlock: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    rwlock
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
