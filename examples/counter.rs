//! A counter under contention: several threads increment one key through optimistic
//! transactions. A transaction whose read went stale is skipped by the applier and its body runs
//! again on a fresh snapshot, so no increment is lost. An attempt whose read is already stale
//! locally is retried without being logged; the others cost a log record each, so the records
//! applied exceed the increments by the conflicts the applier had to decide.
//!
//! Run with `cargo run --example counter`.

use std::thread;

use pagemesh::{Database, Options};

const THREADS: u64 = 4;
const INCREMENTS: u64 = 200;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = Database::open(dir.path(), Options::new())?;

    thread::scope(|scope| -> Result<(), pagemesh::Error> {
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let db = db.clone();
                scope.spawn(move || -> Result<(), pagemesh::Error> {
                    for _ in 0..INCREMENTS {
                        // Up to 1,000 retries: under contention a body may run several times.
                        db.transaction(1_000, |tx| {
                            let count = match tx.get("counters", b"hits")? {
                                Some(bytes) => decode(&bytes),
                                None => 0,
                            };
                            tx.put("counters", b"hits", &(count + 1).to_le_bytes())
                        })?;
                    }
                    Ok(())
                })
            })
            .collect();
        for worker in workers {
            worker.join().expect("worker panicked")?;
        }
        Ok(())
    })?;

    let snapshot = db.read()?;
    let hits = snapshot
        .get("counters", b"hits")?
        .map_or(0, |v| decode(v.bytes));
    let records = db.stats().records;
    println!("{THREADS} threads x {INCREMENTS} increments: counter = {hits}, log records applied = {records}");
    assert_eq!(hits, THREADS * INCREMENTS, "no increment lost");
    Ok(())
}

fn decode(bytes: &[u8]) -> u64 {
    bytes.try_into().map_or(0, u64::from_le_bytes)
}
