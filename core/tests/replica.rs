//! Read-only replicas at the store level: bootstrap from a snapshot, pages ingested from the
//! origin's binlog and ring, the same contents, writes refused, and `Replicated(n)` waits.

use std::time::Duration;

use pagemesh_core::{Database, Durability, Error, Options, WriteBatch};
use pagemesh_logpage::PAGE_SIZE;

fn contents(db: &Database) -> Vec<(String, Vec<u8>, u64, Vec<u8>)> {
    let snapshot = db.read().expect("read");
    let mut out = Vec::new();
    for table in db.tables() {
        for entry in snapshot.prefix(&table, b"").expect("iterate") {
            let (key, value) = entry.expect("entry");
            out.push((table.clone(), key.to_vec(), value.seq, value.bytes.to_vec()));
        }
    }
    out
}

/// A new primary in `dir`/p and its (empty) snapshot, to restore replicas from.
fn empty_primary(dir: &std::path::Path) -> (Database, Vec<u8>) {
    let primary = Database::open(dir.join("p"), Options::new()).unwrap();
    let mut stream = Vec::new();
    primary.read().unwrap().export(&mut stream).unwrap();
    (primary, stream)
}

/// Every page of `primary` from `from` on, in full form: from the binlog, then the ring.
fn pages_from(primary: &Database, from: u64) -> Vec<u8> {
    let mut pages = Vec::new();
    let mut next = from;
    {
        let snapshot = primary.read().unwrap();
        for page in snapshot.binlog_range(from).expect("retained") {
            let page = page.expect("binlog page");
            page.page().extend_full(&mut pages);
            next = page.lsn() + 1;
        }
    }
    let mut cursor = primary
        .plumbing()
        .log()
        .cursor(next)
        .expect("ring holds the rest");
    while let Some(run) = cursor.next_run(64).unwrap() {
        pages.extend_from_slice(run.bytes);
    }
    pages
}

/// Big records (several pages each) applied in one-page groups: snapshots taken while the
/// applier runs often land inside a record. Each is restored as a replica, fed the origin's pages
/// from the LSN the restore names, and must end up equal to the origin.
#[test]
fn replicas_bootstrapped_mid_record_converge_with_their_origin() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::new().group_bytes_max(4096).ring_slots(1024);
    let primary = Database::open(dir.path().join("primary"), options.clone()).unwrap();
    let mut snapshots = Vec::new();
    std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut tickets = Vec::new();
            for i in 0..60u32 {
                let mut batch = WriteBatch::new();
                let value = vec![i as u8; 3000 + (i as usize % 7) * 1500];
                for k in 0..4u32 {
                    batch.put("t", &(i * 4 + k).to_be_bytes(), &value).unwrap();
                }
                batch.put("counters", b"last", &i.to_le_bytes()).unwrap();
                tickets.push(primary.commit_async(&batch, Durability::Applied).unwrap());
            }
            for ticket in tickets {
                ticket.wait().unwrap();
            }
        });
        while !writer.is_finished() {
            let mut stream = Vec::new();
            primary.read().unwrap().export(&mut stream).unwrap();
            snapshots.push(stream);
            std::thread::sleep(Duration::from_micros(300));
        }
    });
    primary.plumbing().log().seal();
    let expected = contents(&primary);
    // Header: magic 8, uuids 32, binlog_next_lsn 8, replay_lsn 8 (snapshot module docs).
    let lsn_at =
        |stream: &[u8], at: usize| u64::from_le_bytes(stream[at..at + 8].try_into().unwrap());
    let (mid_record, whole): (Vec<_>, Vec<_>) = snapshots
        .iter()
        .partition(|stream| lsn_at(stream, 48) < lsn_at(stream, 40));
    assert!(
        !mid_record.is_empty(),
        "no snapshot of {} landed inside a record",
        snapshots.len()
    );
    let chosen = mid_record.iter().take(6).chain(whole.iter().take(2));
    for (i, stream) in chosen.enumerate() {
        let path = dir.path().join(format!("replica-{i}"));
        let (replica, stats) =
            pagemesh_core::Plumbing::restore_replica(&path, &stream[..], options.clone()).unwrap();
        assert!(replica.is_replica());
        assert_eq!(replica.uuid(), primary.uuid());
        assert_eq!(replica.plumbing().received_lsn(), stats.lsn);
        let pages = pages_from(&primary, stats.lsn);
        let mut offered = &pages[..];
        while !offered.is_empty() {
            let taken = replica.plumbing().ingest(offered).unwrap();
            offered = &offered[taken.pages * PAGE_SIZE..];
            std::thread::sleep(Duration::from_millis(1));
        }
        let end = primary.plumbing().received_lsn();
        while replica.applied_lsn() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        let got = contents(&replica);
        if got != expected {
            let first = got.iter().zip(&expected).position(|(a, b)| a != b);
            let show =
                |e: &(String, Vec<u8>, u64, Vec<u8>)| (e.0.clone(), e.1.clone(), e.2, e.3.len());
            eprintln!(
                "len {} vs {}; first diff {:?}: {:?} vs {:?}; header lsn {} replay {}",
                got.len(),
                expected.len(),
                first,
                first.map(|i| show(&got[i])),
                first.map(|i| show(&expected[i])),
                lsn_at(stream, 40),
                lsn_at(stream, 48)
            );
        }
        assert!(
            got == expected,
            "replica {i} (from lsn {}) differs",
            stats.lsn
        );
    }
}

#[test]
fn a_replica_refuses_writes_and_keeps_following_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, stream) = empty_primary(dir.path());
    let path = dir.path().join("r");
    let (replica, stats) =
        pagemesh_core::Plumbing::restore_replica(&path, &stream[..], Options::new()).unwrap();
    let mut batch = WriteBatch::new();
    batch.put("t", b"k", b"v").unwrap();
    assert!(matches!(
        replica.commit(&batch, Durability::Applied),
        Err(Error::ReadOnlyReplica { .. })
    ));
    assert!(matches!(
        replica.transaction(0, |tx| tx.put("t", b"k", b"v")),
        Err(Error::ReadOnlyReplica { .. })
    ));
    primary.commit(&batch, Durability::Applied).unwrap();
    replica
        .plumbing()
        .ingest(&pages_from(&primary, stats.lsn))
        .unwrap();
    drop(replica);
    let replica = Database::open(&path, Options::new()).unwrap();
    assert!(replica.is_replica(), "the role survives a reopen");
    while replica.applied_lsn() < primary.plumbing().received_lsn() {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(contents(&replica) == contents(&primary));
}

#[test]
fn replicated_commits_wait_for_synchronous_acks_and_time_out_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let options = Options::new().replication_timeout(Duration::from_millis(50));
    let db = Database::open(dir.path(), options).unwrap();
    let mut batch = WriteBatch::new();
    batch.put("t", b"k", b"v").unwrap();
    assert!(matches!(
        db.commit(&batch, Durability::Replicated(1)),
        Err(Error::NoReplicas { replicas: 1 })
    ));
    db.plumbing().replication().enable(1);
    let timed_out = db.commit(&batch, Durability::Replicated(1)).unwrap_err();
    assert!(
        matches!(
            timed_out,
            Error::ReplicationTimeout {
                wanted: 1,
                acked: 0,
                ..
            }
        ),
        "{timed_out}"
    );
    let link = db
        .plumbing()
        .replication()
        .attach("r1", uuid::Uuid::from_u128(1), 0);
    let ticket = db
        .commit_async(&batch, Durability::DurableReplicated(1))
        .unwrap();
    assert!(!ticket.is_done());
    std::thread::scope(|s| {
        let acker = s.spawn(|| {
            // Ack once the page is in the committed log, as a replica would on receipt.
            while db.plumbing().received_lsn() == 0 || !db.plumbing().replication().status()[0].sync
            {
                std::thread::yield_now();
            }
            let mut acked = 0;
            while acked < 2 {
                let received = db.plumbing().received_lsn();
                if received > acked {
                    link.ack(received, 0);
                    acked = received;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        });
        let seq = ticket.wait().expect("acked and durable");
        // Durable in the ring (its page is on disk), not necessarily applied yet.
        assert!(
            db.durable_lsn() > seq / 4096,
            "the record's page is durable"
        );
        acker.join().unwrap();
    });
}

/// A primary whose empty snapshot is `stream`, then three records of 5,000 bytes committed after
/// it: pages for a replica restored from `stream` to ingest, more than one.
fn primary_of_three_records(dir: &std::path::Path) -> (Database, Vec<u8>) {
    let (primary, stream) = empty_primary(dir);
    for i in 0..3u8 {
        let mut batch = WriteBatch::new();
        batch.put("t", &[i], &[i; 5000]).unwrap();
        primary.commit(&batch, Durability::Applied).unwrap();
    }
    (primary, stream)
}

/// A replica's ring syncs at most once per `flush_pace` while nobody waits on it: the
/// first page ingested is synced at once, the ones after it wait out the pace (an hour here),
/// and with no pace every page is synced as it arrives. (The paced replica's applier is held
/// back for an hour too: it makes what it applies durable first, `binlog.rs`.)
#[test]
fn a_replica_syncs_its_ring_once_per_flush_pace() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, stream) = primary_of_three_records(dir.path());
    let wait_durable = |replica: &Database, lsn: u64| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while replica.durable_lsn() < lsn {
            assert!(
                std::time::Instant::now() < deadline,
                "never synced to {lsn}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    let paced = Options::new()
        .flush_pace(Duration::from_secs(3600))
        .apply_pace(Duration::from_secs(3600), 1 << 30);
    let (replica, stats) =
        pagemesh_core::Plumbing::restore_replica(dir.path().join("r1"), &stream[..], paced)
            .unwrap();
    let pages = pages_from(&primary, stats.lsn);
    assert!(pages.len() >= 3 * PAGE_SIZE, "the records span pages");
    replica.plumbing().ingest(&pages[..PAGE_SIZE]).unwrap();
    wait_durable(&replica, stats.lsn + 1);
    replica.plumbing().ingest(&pages[PAGE_SIZE..]).unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        replica.durable_lsn(),
        stats.lsn + 1,
        "synced within its pace"
    );

    let unpaced = Options::new().flush_pace(Duration::ZERO);
    let (replica, stats) =
        pagemesh_core::Plumbing::restore_replica(dir.path().join("r2"), &stream[..], unpaced)
            .unwrap();
    replica.plumbing().ingest(&pages[..PAGE_SIZE]).unwrap();
    wait_durable(&replica, stats.lsn + 1);
    replica.plumbing().ingest(&pages[PAGE_SIZE..]).unwrap();
    wait_durable(&replica, stats.lsn + (pages.len() / PAGE_SIZE) as u64);
}

/// Without a pace of its own, a replica takes `REPLICA_FLUSH_PACE` (its syncs protect nothing a
/// commit waits for), not the 10 ms of a database that takes writes: after the first page's
/// sync, pages ingested right after it stay unsynced for as long as that pace. (Its applier is
/// held back here: it makes the pages it applies durable first, `binlog.rs`, which ends the
/// wait for them at its own pace, `REPLICA_APPLY_PACE`.)
#[test]
fn a_replica_paces_its_ring_by_the_replica_default() {
    let dir = tempfile::tempdir().unwrap();
    let (primary, stream) = primary_of_three_records(dir.path());
    let held = Options::new().apply_pace(Duration::from_secs(3600), 1 << 30);
    let (replica, stats) =
        pagemesh_core::Plumbing::restore_replica(dir.path().join("r"), &stream[..], held).unwrap();
    let pages = pages_from(&primary, stats.lsn);
    assert!(pages.len() >= 3 * PAGE_SIZE, "the records span pages");
    replica.plumbing().ingest(&pages[..PAGE_SIZE]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while replica.durable_lsn() < stats.lsn + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the first page never synced"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let synced = std::time::Instant::now();
    replica.plumbing().ingest(&pages[PAGE_SIZE..]).unwrap();
    // Five source paces (10 ms each): a replica on the source's default would have synced.
    std::thread::sleep(Duration::from_millis(50));
    let durable = replica.durable_lsn();
    // A stall of half the replica's pace here could let its next flush come legitimately.
    assert!(
        durable == stats.lsn + 1 || synced.elapsed() >= pagemesh_core::REPLICA_FLUSH_PACE / 2,
        "synced again after {:?}, within the replica's pace of {:?}",
        synced.elapsed(),
        pagemesh_core::REPLICA_FLUSH_PACE,
    );
}
