//! The snapshot stream decoder (`Database::restore` / `restore_replica`), which replicas now feed
//! with SNAPSHOT chunks from the network: on any bytes it must never panic, and either fail with
//! nothing left behind (the directory can be restored into again) or produce a database that
//! opens, reads back, and exports a stream that restores to the same contents.
//!
//! Inputs are tried as they come and with their trailing crc32c re-sealed, so the entry decoder
//! behind the crc check gets fuzzed too. Each run restores into a fresh temporary directory.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pagemesh_core::{Database, Options};

fn contents(db: &Database) -> Vec<(String, Vec<u8>, u64, Vec<u8>)> {
    let snapshot = db.read().expect("a restored database reads");
    let mut out = Vec::new();
    for table in db.tables() {
        for entry in snapshot.prefix(&table, b"").expect("iterate") {
            let (key, value) = entry.expect("entry");
            out.push((table.clone(), key.to_vec(), value.seq, value.bytes.to_vec()));
        }
    }
    out.sort();
    out
}

fn try_restore(bytes: &[u8], replica: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("db");
    let options = Options::new().map_size(64 << 20).ring_slots(16);
    let restored = if replica {
        pagemesh_core::Plumbing::restore_replica(&path, bytes, options.clone())
    } else {
        Database::restore(&path, bytes, options.clone())
    };
    let Ok((db, _)) = restored else {
        // A failed restore leaves nothing: the directory takes a restore again.
        assert!(
            !path.join("lmdb").join("data.mdb").exists(),
            "a failed restore left data behind"
        );
        return;
    };
    assert_eq!(db.is_replica(), replica);
    let before = contents(&db);
    let mut stream = Vec::new();
    db.read()
        .expect("read")
        .export(&mut stream)
        .expect("export");
    drop(db);
    let (copy, _) = Database::restore(dir.path().join("copy"), &stream[..], options)
        .expect("an exported stream restores");
    assert!(
        contents(&copy) == before,
        "export then restore changed the contents"
    );
}

fuzz_target!(|bytes: &[u8]| {
    if bytes.len() > 1 << 16 {
        return;
    }
    let replica = bytes.first().is_some_and(|b| b & 1 == 1);
    try_restore(bytes, replica);
    // Re-seal the trailing crc (crc32c of everything before it) so the decoder gets past it.
    if bytes.len() > 4 {
        let (body, _) = bytes.split_at(bytes.len() - 4);
        let mut sealed = body.to_vec();
        sealed.extend_from_slice(&crc32c::crc32c(body).to_le_bytes());
        try_restore(&sealed, replica);
    }
});
