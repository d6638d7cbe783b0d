//! `bench bootstrap`: how fast a new replica is seeded from a full snapshot over the network.
//!
//! A primary is filled with `mb` MiB of table data (4 KiB values under random 16-byte keys, in
//! batches of 256 records), then a replica node subscribes to it: it has no database, so the
//! primary streams a snapshot (SNAPSHOT frames over loopback), the replica restores it into LMDB
//! and follows on. The figure is snapshot bytes per second from the subscription to the replica
//! being open and caught up. The baseline, in the same run, is the same export piped straight into
//! a local restore with no network (`local-copy`): the ratio says what the network path costs.

use std::time::{Duration, Instant};

use pagemesh_core::{Database, Durability, Options, WriteBatch};
use pagemesh_net::TransportKind;
use rand::{RngCore, SeedableRng};
use serde::Serialize;

use pagemesh::Node;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// One measured variant.
#[derive(Clone, Debug, Serialize)]
pub struct BootstrapMeasurement {
    /// Always `bootstrap`.
    pub workload: &'static str,
    /// `network` (a replica over loopback) or `local-copy` (export piped into a restore).
    pub variant: &'static str,
    /// Snapshot stream bytes.
    pub bytes: u64,
    /// Seconds from start to a caught-up copy.
    pub seconds: f64,
    /// Snapshot megabytes (10^6) per second.
    pub mb_per_sec: f64,
}

const VALUE_BYTES: usize = 4096;

/// Fills a fresh database under `dir` with about `mib` MiB.
fn fill(dir: &std::path::Path, mib: u64) -> Result<Database, BoxError> {
    let db = Database::open(dir, Options::new().map_size(64 << 30))?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    let mut value = vec![0u8; VALUE_BYTES];
    let records = mib * (1 << 20) / VALUE_BYTES as u64;
    let mut batch = WriteBatch::new();
    for _ in 0..records {
        let mut key = [0u8; 16];
        rng.fill_bytes(&mut key);
        rng.fill_bytes(&mut value[..64]);
        batch.put("blobs", &key, &value)?;
        if batch.len() == 256 {
            db.commit(&batch, Durability::Applied)?;
            batch = WriteBatch::new();
        }
    }
    if !batch.is_empty() {
        db.commit(&batch, Durability::Applied)?;
    }
    Ok(db)
}

/// Measures both variants on a primary of `mib` MiB.
pub fn measure(mib: u64, transport: TransportKind) -> Result<Vec<BootstrapMeasurement>, BoxError> {
    let dir = tempfile::tempdir()?;
    let db = fill(&dir.path().join("source"), mib)?;
    let mut out = Vec::new();

    // Baseline: export piped into a local restore, on two threads, no network.
    let started = Instant::now();
    let (reader, writer) = std::io::pipe()?;
    let exported = std::thread::scope(|s| -> Result<u64, BoxError> {
        let export = s.spawn(|| {
            let mut writer = std::io::BufWriter::with_capacity(1 << 20, writer);
            db.read()?.export(&mut writer)
        });
        let (copy, _) = pagemesh_core::Plumbing::restore_replica(
            dir.path().join("local-copy"),
            std::io::BufReader::with_capacity(1 << 20, reader),
            Options::new().map_size(64 << 30),
        )?;
        drop(copy);
        Ok(export.join().map_err(|_| "export panicked")??.bytes)
    })?;
    out.push(cell("local-copy", exported, started.elapsed()));

    // Over the network: a replica with no database subscribes and is seeded.
    let primary = Node::builder("bootstrap-primary", dir.path().join("primary-node"))
        .listen("127.0.0.1:0".parse()?)
        .transport(transport)
        .open()?;
    primary.serve(&db, 0);
    let replica_node = Node::builder("bootstrap-replica", dir.path().join("replica-node"))
        .transport(transport)
        .open()?;
    let started = Instant::now();
    let replica = replica_node.replicate(
        primary.local_addr().ok_or("primary is not listening")?,
        db.uuid(),
        "copy",
        Options::new().map_size(64 << 30),
    )?;
    replica.wait_applied(db.plumbing().received_lsn(), Duration::from_secs(600))?;
    out.push(cell("network", exported, started.elapsed()));
    Ok(out)
}

fn cell(variant: &'static str, bytes: u64, elapsed: Duration) -> BootstrapMeasurement {
    BootstrapMeasurement {
        workload: "bootstrap",
        variant,
        bytes,
        seconds: elapsed.as_secs_f64(),
        mb_per_sec: bytes as f64 / 1e6 / elapsed.as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_database_bootstraps_over_both_transports() {
        for transport in [TransportKind::Epoll, TransportKind::Auto] {
            let cells = measure(4, transport).expect("bootstrap");
            assert_eq!(cells.len(), 2);
            assert!(
                cells
                    .iter()
                    .all(|c| c.bytes > 4 << 20 && c.mb_per_sec > 0.0),
                "{cells:?}"
            );
        }
    }
}
