//! `pagemesh backup DIR OUT` and `pagemesh restore OUT DIR`: a full, consistent snapshot of a
//! database to a file, and back into an empty directory (see `pagemesh_core::Snapshot::export`).
//!
//! Backup reads through `pagemesh_core::ReadOnlyDatabase`, always: it takes no lock a running node
//! or app holds (the log ring's) and writes nothing to the database, so it works on a live
//! database as on a stopped one. It holds what LMDB holds: every applied commit. Records a crashed
//! writer left only in its log ring are recovered by the next open of the database, not backed up.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;

use pagemesh_core::{Database, Options, ReadOnlyDatabase};

/// Options of `pagemesh backup`.
#[derive(clap::Args)]
pub struct BackupArgs {
    /// The database directory.
    dir: PathBuf,
    /// The snapshot file to write.
    out: PathBuf,
}

/// Options of `pagemesh restore`.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// The snapshot file.
    snapshot: PathBuf,
    /// An empty directory to restore into.
    dir: PathBuf,
}

type BoxError = Box<dyn std::error::Error>;

pub fn backup(args: &BackupArgs) -> Result<(), BoxError> {
    let db = ReadOnlyDatabase::open(&args.dir)?;
    let partial = args.out.with_extension("partial");
    let file = File::create(&partial).map_err(|e| format!("create {}: {e}", partial.display()))?;
    let mut out = BufWriter::new(file);
    let stats = db.read()?.export(&mut out)?;
    let file = out
        .into_inner()
        .map_err(|e| format!("write {}: {e}", partial.display()))?;
    file.sync_all()?;
    // Only a complete, synced snapshot gets the name asked for.
    std::fs::rename(&partial, &args.out)?;
    println!(
        "backed up {} entries at log position {} to {} ({} bytes)",
        stats.entries,
        stats.lsn,
        args.out.display(),
        stats.bytes
    );
    Ok(())
}

pub fn restore(args: &RestoreArgs) -> Result<(), BoxError> {
    let file =
        File::open(&args.snapshot).map_err(|e| format!("open {}: {e}", args.snapshot.display()))?;
    let (db, stats) = Database::restore(&args.dir, BufReader::new(file), Options::new())?;
    println!(
        "restored {} entries of database {} into {}; its log continues at position {}",
        stats.entries,
        db.uuid(),
        args.dir.display(),
        stats.lsn
    );
    std::io::stdout().flush()?;
    Ok(())
}
