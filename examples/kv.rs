//! Key-value basics: open a database, write batches, read through snapshots, scan by prefix and
//! range, write conditionally with `put_if_version`, create, clear and drop tables, and use a
//! typed table.
//!
//! Run with `cargo run --example kv`.

use pagemesh::codec::{Str, U64};
use pagemesh::{Database, Durability, Error, Options, Table};

/// A typed view of a table: `&str` keys, `u64` values (big-endian on disk).
const POPULATION: Table<Str, U64> = Table::new("population");

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let db = Database::open(dir.path(), Options::new())?;

    // One batch is one atomic log record, over any tables. `Applied` returns once readers see it.
    let mut batch = db.batch();
    batch
        .put("users", b"ada", b"Ada Lovelace")?
        .put("users", b"alan", b"Alan Turing")?
        .put("users", b"grace", b"Grace Hopper")?
        .put("cities", b"london", b"8.9M")?;
    let version = db.commit(&batch, Durability::Applied)?;
    println!("committed 4 puts at version {version}");

    // A snapshot is one consistent view; values are borrowed from the memory map, zero-copy.
    let snapshot = db.read()?;
    let ada = snapshot.get("users", b"ada")?.expect("committed");
    println!(
        "ada = {} (version {})",
        String::from_utf8_lossy(ada.bytes),
        ada.seq
    );
    assert_eq!(ada.seq, version);

    // Every key that starts with "a", in key order.
    let a_names: Vec<String> = snapshot
        .prefix("users", b"a")?
        .map(|entry| entry.map(|(key, _)| String::from_utf8_lossy(key).into_owned()))
        .collect::<Result<_, Error>>()?;
    println!("users starting with a: {a_names:?}");
    assert_eq!(a_names, ["ada", "alan"]);

    // A range, from "alan" up to but not including "grace".
    let range: Vec<String> = snapshot
        .range("users", "alan".."grace")?
        .map(|entry| entry.map(|(key, _)| String::from_utf8_lossy(key).into_owned()))
        .collect::<Result<_, Error>>()?;
    assert_eq!(range, ["alan"]);

    // Backwards: the greatest key first.
    let newest_first: Vec<String> = snapshot
        .prefix_rev("users", b"")?
        .map(|entry| entry.map(|(key, _)| String::from_utf8_lossy(key).into_owned()))
        .collect::<Result<_, Error>>()?;
    assert_eq!(newest_first, ["grace", "alan", "ada"]);
    drop(snapshot);

    // Deletes go through batches too. `Durable` returns once the log holding it is on disk,
    // maybe before readers see it; `Applied` once they do. Here: read our own write.
    let mut batch = db.batch();
    batch.delete("users", b"grace")?;
    db.commit(&batch, Durability::Applied)?;
    assert!(db.read()?.get("users", b"grace")?.is_none());

    // Compare-and-set: write only if the key is still at the version read.
    let first = db.put_if_version("config", b"mode", None, b"fast")?;
    match db.put_if_version("config", b"mode", None, b"slow") {
        Err(Error::Conflict { current, .. }) => {
            println!("conflict: the key is at version {current:?}, not absent");
            assert_eq!(current, Some(first));
            db.put_if_version("config", b"mode", current, b"slow")?;
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    let mode = db.read()?.get("config", b"mode")?.map(|v| v.bytes.to_vec());
    assert_eq!(mode.as_deref(), Some(&b"slow"[..]));
    println!("tables: {:?}", db.tables());

    // Tables are explicit when they need to be: created empty, cleared, dropped. Each is a
    // logged write, so replicas do the same. (A put still creates its table.)
    db.create_table("audit")?;
    db.clear_table("cities")?;
    assert!(db.read()?.prefix("cities", b"")?.next().is_none());
    db.drop_table("cities")?;
    assert_eq!(db.tables(), ["audit", "config", "users"]);

    // A typed table: encoded by its codecs, stored as bytes like any other.
    let mut batch = db.batch();
    POPULATION.put(&mut batch, "london", &8_900_000)?;
    POPULATION.put(&mut batch, "paris", &2_100_000)?;
    db.commit(&batch, Durability::Applied)?;
    let snapshot = db.read()?;
    assert_eq!(POPULATION.get(&snapshot, "paris")?, Some(2_100_000));
    for entry in POPULATION.iter(&snapshot)? {
        let (city, people) = entry?;
        println!("{city}: {people}");
    }
    Ok(())
}
