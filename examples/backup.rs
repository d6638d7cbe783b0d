//! Backup and restore: export a consistent snapshot of a live database as a stream, restore it
//! into an empty directory, and carry on writing there.
//!
//! Run with `cargo run --example backup`.

use pagemesh::{Database, Durability, Options};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = Database::open(dir.path().join("live"), Options::new())?;
    for i in 0..1_000u32 {
        let mut batch = db.batch();
        batch.put("readings", &i.to_be_bytes(), &(i * 7).to_le_bytes())?;
        db.commit(&batch, Durability::Memory)?;
    }
    let mut marker = db.batch();
    marker.put("meta", b"backed-up", b"yes")?;
    db.commit(&marker, Durability::Applied)?;

    // A snapshot never blocks writers; the export is consistent across every table. A file, a
    // socket or anything `Write` works as well as this buffer.
    let mut backup = Vec::new();
    let exported = db.read()?.export(&mut backup)?;
    println!(
        "exported {} entries ({} bytes) at log page {}",
        exported.entries,
        backup.len(),
        exported.lsn
    );

    let (restored, stats) =
        Database::restore(dir.path().join("restored"), &backup[..], Options::new())?;
    println!("restored {} entries", stats.entries);
    assert_eq!(
        restored.uuid(),
        db.uuid(),
        "a restore keeps the database's identity"
    );
    let snapshot = restored.read()?;
    assert_eq!(snapshot.prefix("readings", b"")?.count(), 1_000);
    let reading = snapshot
        .get("readings", &999u32.to_be_bytes())?
        .ok_or("restored")?;
    assert_eq!(reading.bytes, (999u32 * 7).to_le_bytes());
    drop(snapshot);

    // The restored copy continues the log.
    let mut batch = restored.batch();
    batch.put("readings", &1_000u32.to_be_bytes(), &7_000u32.to_le_bytes())?;
    restored.commit(&batch, Durability::Durable)?;
    println!("the restored database takes new writes");
    Ok(())
}
