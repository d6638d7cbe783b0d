//! A replica bootstraps a database many times larger than half its source's ring in one
//! snapshot, on both transports.
//!
//! The link watchdog drops a link whose write is blocked while its replica is more than half a
//! ring behind, so that a replica that stops reading never holds the source's ring. It used to
//! apply that rule while a snapshot was being sent, when the link holds no ring slot at all: a
//! restoring replica reads slower than the source sends, the write blocks, and the snapshot was
//! cut and started again, 287 times for a 64 MiB database in one `bench bootstrap` run (25 s
//! instead of 1.2 s). Here the bootstrap must take exactly one link and one restore, and the copy
//! must equal its source.

mod common;

use std::net::SocketAddr;

use common::{assert_same, eventually, init_tracing, options, wait_following, PATIENCE};
use pagemesh::core::{Durability, WriteBatch};
use pagemesh::net::TransportKind;
use pagemesh::Node;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Ring of the source: 1,024 pages (4 MiB), so half a ring is 2 MiB.
const RING_SLOTS: u64 = 1024;
/// The database: 48 MiB of incompressible values, 24 times half the ring.
const VALUES: usize = 48 * 64;
const VALUE_BYTES: usize = 16 << 10;

fn one_snapshot_bootstraps_a_large_database(transport: TransportKind) {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    // Default liveness (5 s): the bound here is on restarts, not on speed.
    let source = Node::builder("source", dir.path().join("source"))
        .transport(transport)
        .listen(SocketAddr::from(([127, 0, 0, 1], 0)))
        .open()
        .unwrap();
    let db = source.open_database("db", options(RING_SLOTS)).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut value = vec![0; VALUE_BYTES];
    for chunk in 0..VALUES / 64 {
        let mut batch = WriteBatch::new();
        for i in 0..64 {
            rng.fill_bytes(&mut value);
            let key = ((chunk * 64 + i) as u64).to_be_bytes();
            batch.put("t", &key, &value).unwrap();
        }
        db.commit(&batch, Durability::Applied).unwrap();
    }
    source.serve(&db, 0);
    let follower = Node::builder("follower", dir.path().join("follower"))
        .transport(transport)
        .open()
        .unwrap();
    let replica = follower
        .replicate(
            source.local_addr().unwrap(),
            db.uuid(),
            "copy",
            options(RING_SLOTS),
        )
        .unwrap();
    let copy = wait_following(&replica, "replica");
    // The restored database is handed over a moment before the link records the restore.
    let status = eventually("the restore recorded", PATIENCE, || {
        let status = replica.status();
        (status.restores > 0 && !status.restoring).then_some(status)
    });
    assert_eq!(
        (status.links, status.restores),
        (1, 1),
        "the bootstrap took more than one link or restore: {status:?}"
    );
    assert_same(&db, &copy, "bootstrapped copy");
}

on_both_transports!(one_snapshot_bootstraps_a_large_database);
