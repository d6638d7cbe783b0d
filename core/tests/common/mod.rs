//! Helpers the core test files share.

use pagemesh_core::Database;

/// Every entry of every table, in table then key order: table, key, version, bytes.
pub fn contents(db: &Database) -> Vec<(String, Vec<u8>, u64, Vec<u8>)> {
    let snapshot = db.read().unwrap();
    let mut out = Vec::new();
    for table in db.tables() {
        for entry in snapshot.prefix(&table, b"").unwrap() {
            let (key, value) = entry.unwrap();
            out.push((table.clone(), key.to_vec(), value.seq, value.bytes.to_vec()));
        }
    }
    out
}
