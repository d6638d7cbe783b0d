//! What the network counts, for [`Service::metrics`](super::Service::metrics): bytes in and out,
//! connections refused before they authenticated (by admission [`Reason`]), frames refused (the
//! link that carried them is closed: by the frame's fault) and links that ended on any other
//! error, by kind.
//!
//! Counters are relaxed atomics in one [`NetMetrics`] per service, shared with whoever reads
//! them. The byte counters are bumped by the transport's reads and writes on the service's
//! runtime thread: the service installs its `NetMetrics` in a thread-local there
//! (`install`), so the transport needs no handle threaded through every link (a transport
//! used outside a service, as the transport bench does, counts nothing). Every link of a
//! service runs on that one thread (DESIGN.md), so nothing is missed.

use std::cell::OnceCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::admission::Reason;
use crate::error::Error;

/// Admission reasons, in the order of [`NetMetricsSnapshot::refused_handshakes`].
const REFUSALS: [Reason; 5] = [
    Reason::LinksFull,
    Reason::AddressFull,
    Reason::PoolFull,
    Reason::HandshakeTimeout,
    Reason::HandshakeFailed,
];

/// Why a link ended, by the kind of its error: the first ones are a frame's fault.
const LINK_ERRORS: [&str; 22] = [
    // A frame refused.
    "frame_too_large",
    "frame_crc",
    "unknown_frame_type",
    "malformed_frame",
    "unexpected_frame",
    "foreign_run",
    "foreign_have",
    "foreign_receipts",
    "too_many_receipts",
    "page_refused",
    // Anything else.
    "io",
    "peer_closed",
    "link_timeout",
    "write_blocked",
    "replica_holds_ring",
    "refused",
    "auth_failed",
    "version_mismatch",
    "duplicate_node",
    "handshake_timeout",
    "storage",
    "other",
];
/// How many of [`LINK_ERRORS`] are a frame's fault.
const FRAME_ERRORS: usize = 10;

/// The index in [`LINK_ERRORS`] of `error`'s kind.
fn link_error_index(error: &Error) -> usize {
    let name = match error {
        Error::FrameTooLarge { .. } => "frame_too_large",
        Error::FrameCrc { .. } => "frame_crc",
        Error::UnknownFrameType { .. } => "unknown_frame_type",
        Error::MalformedFrame { .. } => "malformed_frame",
        Error::UnexpectedFrame { .. } => "unexpected_frame",
        Error::ForeignRun { .. } => "foreign_run",
        Error::ForeignHave { .. } => "foreign_have",
        Error::ForeignReceipts { .. } => "foreign_receipts",
        Error::TooManyReceipts { .. } => "too_many_receipts",
        Error::Ingest { .. } => "page_refused",
        Error::Io { .. } => "io",
        Error::PeerClosed { .. } | Error::LinkClosed { .. } => "peer_closed",
        Error::LinkTimeout { .. } => "link_timeout",
        Error::WriteBlocked { .. } => "write_blocked",
        Error::ReplicaHoldsRing { .. } => "replica_holds_ring",
        Error::Refused { .. } | Error::LinksFull { .. } => "refused",
        Error::AuthFailed { .. } => "auth_failed",
        Error::VersionMismatch { .. } => "version_mismatch",
        Error::DuplicateNode { .. } => "duplicate_node",
        Error::HandshakeTimeout => "handshake_timeout",
        Error::Log(_) | Error::Source { .. } | Error::Restore { .. } => "storage",
        _ => "other",
    };
    LINK_ERRORS
        .iter()
        .position(|&known| known == name)
        .unwrap_or(LINK_ERRORS.len() - 1)
}

/// A service's counters; see the module docs.
#[derive(Debug, Default)]
pub struct NetMetrics {
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    refused: [AtomicU64; REFUSALS.len()],
    link_errors: [AtomicU64; LINK_ERRORS.len()],
}

impl NetMetrics {
    /// A connection was refused or closed before it authenticated, for `reason`.
    pub(crate) fn refused(&self, reason: Reason) {
        let index = REFUSALS.iter().position(|&r| r == reason).unwrap_or(0);
        self.refused[index].fetch_add(1, Ordering::Relaxed);
    }

    /// An authenticated link ended on `error`.
    pub(crate) fn link_failed(&self, error: &Error) {
        self.link_errors[link_error_index(error)].fetch_add(1, Ordering::Relaxed);
    }

    /// The counters now.
    pub fn snapshot(&self) -> NetMetricsSnapshot {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let errors = LINK_ERRORS.iter().zip(&self.link_errors);
        NetMetricsSnapshot {
            bytes_in: load(&self.bytes_in),
            bytes_out: load(&self.bytes_out),
            refused_handshakes: REFUSALS
                .iter()
                .zip(&self.refused)
                .map(|(reason, count)| (reason.name(), load(count)))
                .collect(),
            refused_frames: (errors.clone().take(FRAME_ERRORS))
                .map(|(name, count)| (*name, load(count)))
                .collect(),
            link_errors: (errors.skip(FRAME_ERRORS))
                .map(|(name, count)| (*name, load(count)))
                .collect(),
        }
    }
}

/// The network's counters at one moment (since the service started); every reason is listed,
/// zero or not, so a scraper sees each series from the start.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetMetricsSnapshot {
    /// Bytes read from every link's socket.
    pub bytes_in: u64,
    /// Bytes written to every link's socket.
    pub bytes_out: u64,
    /// Connections refused or closed before they authenticated, by admission reason
    /// (`links_full`, `address_full`, `pool_full`, `handshake_timeout`, `handshake_failed`).
    pub refused_handshakes: Vec<(&'static str, u64)>,
    /// Authenticated links closed because of a frame they carried, by the frame's fault.
    pub refused_frames: Vec<(&'static str, u64)>,
    /// Authenticated links that ended on any other error, by kind.
    pub link_errors: Vec<(&'static str, u64)>,
}

thread_local! {
    /// The counters of the service whose runtime runs on this thread.
    static COUNTERS: OnceCell<Arc<NetMetrics>> = const { OnceCell::new() };
}

/// Makes the transport's reads and writes on this thread count into `metrics`.
pub(crate) fn install(metrics: Arc<NetMetrics>) {
    COUNTERS.with(|counters| {
        let _ = counters.set(metrics);
    });
}

/// `bytes` were read from a socket on this thread.
pub(crate) fn bytes_in(bytes: u64) {
    COUNTERS.with(|counters| {
        if let Some(metrics) = counters.get() {
            metrics.bytes_in.fetch_add(bytes, Ordering::Relaxed);
        }
    });
}

/// `bytes` were written to a socket on this thread.
pub(crate) fn bytes_out(bytes: u64) {
    COUNTERS.with(|counters| {
        if let Some(metrics) = counters.get() {
            metrics.bytes_out.fetch_add(bytes, Ordering::Relaxed);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_kind_is_named_once_and_frames_come_first() {
        let mut names = LINK_ERRORS.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), LINK_ERRORS.len());
        let metrics = NetMetrics::default();
        metrics.link_failed(&Error::HandshakeTimeout);
        metrics.link_failed(&Error::MalformedFrame {
            frame: "PAGES",
            reason: "short",
        });
        metrics.refused(Reason::PoolFull);
        let snapshot = metrics.snapshot();
        assert!(snapshot.refused_frames.contains(&("malformed_frame", 1)));
        assert!(snapshot.link_errors.contains(&("handshake_timeout", 1)));
        assert!(snapshot.refused_handshakes.contains(&("pool_full", 1)));
        assert_eq!(
            snapshot.refused_frames.iter().map(|(_, n)| n).sum::<u64>(),
            1
        );
    }

    #[test]
    fn bytes_count_only_on_a_thread_with_counters_installed() {
        let metrics = Arc::new(NetMetrics::default());
        std::thread::spawn(|| bytes_in(5)).join().unwrap();
        let counted = Arc::clone(&metrics);
        std::thread::spawn(move || {
            install(counted);
            bytes_in(7);
            bytes_out(3);
        })
        .join()
        .unwrap();
        assert_eq!(
            (metrics.snapshot().bytes_in, metrics.snapshot().bytes_out),
            (7, 3)
        );
    }
}
