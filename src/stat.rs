//! `pagemesh stat DIR [--json]`: what a database holds, also while a node or app writes it.
//!
//! It reads through `pagemesh_core::ReadOnlyDatabase`, so it takes no lock the writer holds and
//! writes nothing to the database. Identity, log positions, cursors and per-table record counts
//! come from one LMDB read transaction (`Snapshot::stat`), so they agree with each other; the file
//! sizes are read from the filesystem just after it, and the LMDB environment figures describe its
//! newest commit.

use std::path::{Path, PathBuf};

use pagemesh_core::{DatabaseStat, ReadOnlyDatabase};
use serde::Serialize;

/// Options of `pagemesh stat`.
#[derive(clap::Args)]
pub struct StatArgs {
    /// The database directory.
    dir: PathBuf,
    /// One JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The report, as `--json` prints it.
#[derive(Serialize)]
struct Report {
    path: PathBuf,
    database_uuid: uuid::Uuid,
    origin_uuid: uuid::Uuid,
    /// `primary` or `replica`.
    role: &'static str,
    /// Pages below this are applied: the applied LSN, the binlog's next LSN.
    binlog_next_lsn: u64,
    replay_lsn: u64,
    applied_seq_end: u64,
    binlog_oldest_lsn: u64,
    binlog_bytes: u64,
    cursors: Vec<Cursor>,
    tables: Vec<Table>,
    lmdb: Lmdb,
    /// The log's files (`log.head` and its segments) and their bytes in all; no files in a
    /// restored copy not yet opened.
    log_files: usize,
    log_file_bytes: u64,
}

#[derive(Serialize)]
struct Cursor {
    name: String,
    lsn: u64,
}

#[derive(Serialize)]
struct Table {
    name: String,
    records: u64,
    pages: u64,
}

#[derive(Serialize)]
struct Lmdb {
    file_bytes: u64,
    page_size: u32,
    /// Pages holding tables and pagemesh's own databases in the snapshot.
    used_pages: u64,
    /// Newest commit's highest page number.
    last_page: u64,
    map_bytes: u64,
    /// Reader slots handed out so far: a high-water mark, not the live readers.
    readers: u32,
    readers_max: u32,
}

type BoxError = Box<dyn std::error::Error>;

pub fn stat(args: &StatArgs) -> Result<(), BoxError> {
    let db = ReadOnlyDatabase::open(&args.dir)?;
    let stat = db.read()?.stat()?;
    let report = report(&args.dir, stat)?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report);
    }
    Ok(())
}

fn file_bytes(path: &Path) -> Result<Option<u64>, BoxError> {
    match std::fs::metadata(path) {
        Ok(meta) => Ok(Some(meta.len())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(format!("stat {}: {error}", path.display()).into()),
    }
}

fn report(dir: &Path, stat: DatabaseStat) -> Result<Report, BoxError> {
    let data = dir.join("lmdb").join("data.mdb");
    let file_bytes_lmdb =
        file_bytes(&data)?.ok_or_else(|| format!("{} vanished", data.display()))?;
    let log_files = pagemesh_logpage::Log::files(dir)?;
    let mut log_file_bytes = 0;
    for path in &log_files {
        log_file_bytes += file_bytes(path)?.unwrap_or(0);
    }
    Ok(Report {
        path: dir.into(),
        database_uuid: stat.database_uuid,
        origin_uuid: stat.origin_uuid,
        role: if stat.is_replica {
            "replica"
        } else {
            "primary"
        },
        binlog_next_lsn: stat.binlog_next_lsn,
        replay_lsn: stat.replay_lsn,
        applied_seq_end: stat.applied_seq_end,
        binlog_oldest_lsn: stat.binlog_oldest_lsn,
        binlog_bytes: stat.binlog_bytes,
        cursors: (stat.cursors.into_iter())
            .map(|(name, lsn)| Cursor { name, lsn })
            .collect(),
        tables: (stat.tables.into_iter())
            .map(|t| Table {
                name: t.name,
                records: t.records,
                pages: t.pages,
            })
            .collect(),
        lmdb: Lmdb {
            file_bytes: file_bytes_lmdb,
            page_size: stat.page_size,
            used_pages: stat.used_pages,
            last_page: stat.lmdb.last_page,
            map_bytes: stat.lmdb.map_bytes,
            readers: stat.lmdb.readers,
            readers_max: stat.lmdb.readers_max,
        },
        log_files: log_files.len(),
        log_file_bytes,
    })
}

fn print_text(r: &Report) {
    println!("database  {}", r.path.display());
    println!("uuid      {}", r.database_uuid);
    println!("origin    {}", r.origin_uuid);
    println!("role      {}", r.role);
    println!(
        "applied   lsn {} (binlog next), replay from lsn {}, seq end {}",
        r.binlog_next_lsn, r.replay_lsn, r.applied_seq_end
    );
    println!(
        "binlog    oldest lsn {}, {} bytes",
        r.binlog_oldest_lsn, r.binlog_bytes
    );
    if r.cursors.is_empty() {
        println!("cursors   none");
    }
    for cursor in &r.cursors {
        println!("cursor    {} at lsn {}", cursor.name, cursor.lsn);
    }
    for table in &r.tables {
        println!(
            "table     {} {} records, {} pages",
            table.name, table.records, table.pages
        );
    }
    let l = &r.lmdb;
    println!(
        "lmdb      data.mdb {} bytes, {} pages of {} bytes used, last page {}, reader slots {}/{}, map {} bytes",
        l.file_bytes, l.used_pages, l.page_size, l.last_page, l.readers, l.readers_max, l.map_bytes
    );
    match r.log_files {
        0 => println!("log       no log files"),
        files => println!(
            "log       log.head and {} segment files, {} bytes",
            files - 1,
            r.log_file_bytes
        ),
    }
}
