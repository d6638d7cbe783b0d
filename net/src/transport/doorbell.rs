//! The io_uring runtime's run queue and the handshake that wakes its thread from other threads.
//!
//! Tasks of the io_uring runtime ([`super::uring`]) are woken from any thread: committers wake
//! shippers, the applier wakes nothing but its own thread, a test thread wakes a subscription.
//! A waker pushes the task onto the ready list; if the runtime thread is parked in
//! `io_uring_enter` it must also ring a bell (an eventfd the ring is reading), or the task waits
//! for an unrelated completion. Ringing on every wake would cost a syscall per wake, so the
//! runtime announces when it is about to park.
//!
//! The handshake, with SeqCst on both atomic accesses and the list under a mutex:
//!
//! - runtime: `sleeping = true`, then look at the list; park only if it is empty.
//! - waker: push onto the list, then `swap(sleeping, false)`; ring if it was `true`.
//!
//! Either the runtime's look sees the push, or the waker's swap sees the runtime's `true` (the
//! runtime's store precedes its lock of the list, which precedes the waker's lock, which precedes
//! its swap). A wake is never lost; at worst a bell rings for a runtime already awake, which
//! costs one spurious return from the next park.
//!
//! The model test below runs this code on shuttle's scheduler (`--features shuttle`): a lost
//! wake-up would leave the runtime parked for ever with work queued, which shuttle reports as a
//! deadlock.

#[cfg(not(feature = "shuttle"))]
use std::sync::atomic::{AtomicBool, Ordering};
#[cfg(not(feature = "shuttle"))]
use std::sync::{Mutex, MutexGuard, PoisonError};

#[cfg(feature = "shuttle")]
use shuttle::sync::atomic::{AtomicBool, Ordering};
#[cfg(feature = "shuttle")]
use shuttle::sync::{Mutex, MutexGuard, PoisonError};

/// What ends a park: the real runtime writes an eventfd.
pub(crate) trait Bell {
    fn ring(&self);
}

/// The ready list and the `sleeping` flag, with the bell that wakes a parked runtime.
pub(crate) struct Doorbell<B> {
    ready: Mutex<Vec<usize>>,
    sleeping: AtomicBool,
    bell: B,
}

impl<B: Bell> Doorbell<B> {
    pub fn new(bell: B) -> Self {
        Self {
            ready: Mutex::new(Vec::new()),
            sleeping: AtomicBool::new(false),
            bell,
        }
    }

    pub fn bell(&self) -> &B {
        &self.bell
    }

    fn ready(&self) -> MutexGuard<'_, Vec<usize>> {
        self.ready.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `task` to be polled, from any thread; rings the bell if the runtime is parked.
    pub fn schedule(&self, task: usize) {
        self.ready().push(task);
        if self.sleeping.swap(false, Ordering::SeqCst) {
            self.bell.ring();
        }
    }

    /// Takes every queued task (runtime thread).
    pub fn take(&self) -> Vec<usize> {
        std::mem::take(&mut *self.ready())
    }

    pub fn is_empty(&self) -> bool {
        self.ready().is_empty()
    }

    /// The runtime is about to park: `true` if it may (from now on wakers ring the bell), `false`
    /// if work is already queued (then it must not park).
    pub fn prepare_park(&self) -> bool {
        self.sleeping.store(true, Ordering::SeqCst);
        if self.is_empty() {
            true
        } else {
            self.sleeping.store(false, Ordering::SeqCst);
            false
        }
    }

    /// The runtime is awake again (after a park, or instead of one).
    pub fn unpark(&self) {
        self.sleeping.store(false, Ordering::SeqCst);
    }
}

#[cfg(all(test, feature = "shuttle"))]
mod model {
    use shuttle::sync::{Arc, Condvar, Mutex};

    use super::{Bell, Doorbell};

    /// An eventfd: ringing makes the counter non-zero; a park waits for that and resets it.
    #[derive(Default)]
    struct ModelBell {
        rung: Mutex<bool>,
        changed: Condvar,
    }

    impl Bell for ModelBell {
        fn ring(&self) {
            *self.rung.lock().unwrap() = true;
            self.changed.notify_one();
        }
    }

    impl ModelBell {
        fn wait(&self) {
            let mut rung = self.rung.lock().unwrap();
            while !*rung {
                rung = self.changed.wait(rung).unwrap();
            }
            *rung = false;
        }
    }

    const WAKERS: usize = 3;
    const WAKES: usize = 3;

    /// Wakers on three threads each schedule three tasks while the runtime runs its loop: take,
    /// then park if `prepare_park` allows. The runtime must see all nine without a lost wake-up.
    fn wakes_are_never_lost() {
        let doorbell = Arc::new(Doorbell::new(ModelBell::default()));
        let wakers: Vec<_> = (0..WAKERS)
            .map(|waker| {
                let doorbell = Arc::clone(&doorbell);
                shuttle::thread::spawn(move || {
                    for wake in 0..WAKES {
                        doorbell.schedule(waker * WAKES + wake);
                    }
                })
            })
            .collect();
        let mut seen = [false; WAKERS * WAKES];
        let mut left = WAKERS * WAKES;
        while left > 0 {
            for task in doorbell.take() {
                assert!(!seen[task], "task {task} delivered twice");
                seen[task] = true;
                left -= 1;
            }
            if left > 0 && doorbell.prepare_park() {
                doorbell.bell().wait();
                doorbell.unpark();
            }
        }
        for waker in wakers {
            waker.join().unwrap();
        }
    }

    #[test]
    fn doorbell_random() {
        shuttle::check_random(wakes_are_never_lost, 20_000);
    }

    #[test]
    fn doorbell_pct() {
        shuttle::check_pct(wakes_are_never_lost, 20_000, 3);
    }
}
