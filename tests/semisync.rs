//! Semi-synchronous replication between real nodes: k of the replicas are synchronous; when one
//! of them goes, an asynchronous one is promoted and `Replicated(1)` commits keep returning;
//! with too few left they fail after the configured timeout, never silently downgraded.

mod common;

use std::time::Duration;

use common::{node, options, wait_following, Pair};
use pagemesh::core::{Durability, Error, WriteBatch};
use pagemesh::net::TransportKind;

fn promotion(transport: TransportKind) {
    let (pair, [first]) = Pair::builder(transport)
        .ring_slots(256)
        .replication_timeout(Duration::from_millis(300))
        .start_with(["first"]);
    let db = &pair.db;
    let second = pair.follower("second").start();
    let second_db = second.wait_following();
    pair.wait_attached(2, 1);
    let status = db.plumbing().replication().status();
    assert!(
        status[0].sync && !status[1].sync,
        "attach order decides: {status:?}"
    );

    let commit = |i: u32| {
        let mut batch = WriteBatch::new();
        batch.put("t", &i.to_be_bytes(), b"value").unwrap();
        db.commit(&batch, Durability::Replicated(1))
    };
    commit(0).expect("the synchronous replica acks");

    // The synchronous replica goes: the asynchronous one is promoted, commits go on.
    drop(first);
    pair.wait_attached(1, 1);
    let seq = commit(1).expect("the promoted replica acks");
    // Acked on receipt: the promoted replica has the record once it applies what it received.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while second_db.applied_lsn() <= seq / 4096 {
        assert!(
            std::time::Instant::now() < deadline,
            "the promoted replica applies it"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    let value = second_db
        .read()
        .unwrap()
        .get("t", &1u32.to_be_bytes())
        .unwrap()
        .map(|v| v.seq);
    assert_eq!(value, Some(seq));

    // None left: Replicated(1) fails after its timeout, with a clear error.
    drop(second);
    pair.wait_attached(0, 0);
    match commit(2) {
        Err(Error::ReplicationTimeout {
            wanted: 1,
            acked: 0,
            ..
        }) => {}
        other => panic!("expected ReplicationTimeout, got {other:?}"),
    }
}

/// A replica at an absolute path outside the node's data directory; the path is refused while in
/// use and free again once the replica is dropped.
#[test]
fn a_replica_lives_at_any_path_and_gives_it_back_when_dropped() {
    let pair = Pair::builder(TransportKind::Epoll).ring_slots(64).start();
    let elsewhere = tempfile::tempdir().unwrap();
    let at = elsewhere.path().join("copy");
    let at = at.to_str().unwrap();
    let follower = node("follower", pair.dir(), TransportKind::Epoll, None, None);
    let replicate = || follower.replicate(pair.addr(), pair.db.uuid(), at, options(64));
    let replica = replicate().unwrap();
    wait_following(&replica, "replica");
    assert!(matches!(
        replicate(),
        Err(pagemesh::NodeError::AlreadyOpen { .. })
    ));
    drop(replica);
    pair.wait_attached(0, 0);
    // The link closes on the network thread: retry briefly while its ring lock goes.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let again = loop {
        match replicate() {
            Ok(replica) => break replica,
            Err(pagemesh::NodeError::Store(_)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(error) => panic!("replicating into the freed path: {error}"),
        }
    };
    wait_following(&again, "replica again");
    assert_eq!(again.status().restores, 0, "it resumes what is on disk");
    assert!(elsewhere.path().join("copy").exists());
}

on_both_transports!(promotion);
