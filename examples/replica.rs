//! A primary and a replica in one process: the primary serves a database, the replica follows it
//! over loopback TCP, and a reader waits on the replica for a commit by its receipt (which could
//! just as well have been sent to another process as text).
//!
//! Run with `cargo run --example replica`.

use std::time::Duration;

use pagemesh::{Durability, Node, Options, Receipt};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let primary = Node::builder("primary", dir.path().join("primary"))
        .listen("127.0.0.1:0".parse()?)
        .open()?;
    let db = primary.open_database("orders", Options::new())?;
    // One synchronous replica: `Replicated(1)` commits wait for its receipt of their pages.
    primary.serve(&db, 1);
    let addr = primary.local_addr().ok_or("the primary listens")?;
    println!("primary listens on {addr}, database {}", db.uuid());

    let replica_node = Node::builder("replica", dir.path().join("replica")).open()?;
    let replica = replica_node.replicate(addr, db.uuid(), "orders", Options::new())?;

    let mut last = None;
    for order in 1..=100u32 {
        let mut batch = db.batch();
        batch.put(
            "orders",
            &order.to_be_bytes(),
            format!("order {order}").as_bytes(),
        )?;
        // Returns once the replica has received the pages; if it timed out, the error would say
        // the write is committed locally all the same, and carry its receipt: never retry it.
        last = Some(db.commit_with_receipt(&batch, Durability::Replicated(1))?);
    }
    let receipt = last.ok_or("committed")?;

    // What a reader in another process would do with the receipt it was sent.
    let text = receipt.to_string();
    println!("last commit's receipt: {text}");
    let receipt: Receipt = text.parse()?;
    let copy = replica.wait_for(&receipt, Duration::from_secs(30))?;
    let snapshot = copy.read()?;
    let count = snapshot.prefix("orders", b"")?.count();
    let last_order = snapshot
        .get("orders", &100u32.to_be_bytes())?
        .ok_or("replicated")?;
    println!(
        "the replica holds {count} orders; the last at version {}",
        last_order.seq
    );
    assert_eq!((count, last_order.seq), (100, receipt.version()));
    Ok(())
}
