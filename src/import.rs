//! `pagemesh import` and `pagemesh generate`: CSV in and out of a database.
//!
//! Import reads rows with [`pagemesh::workload::csv_import`], keyed by one column, and commits
//! them in `WriteBatch`es of `--batch` rows with `Durable`. Every bad row is reported on stderr
//! with its line number and skipped; the good rows are imported, and the command then fails so
//! that a script notices.

use std::fs::File;
use std::io::{BufReader, BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use pagemesh::workload::csv_import::read_rows;
use pagemesh::workload::price_paid::PricePaid;
use pagemesh_core::{Database, Durability, Options, WriteBatch};

/// Options of `pagemesh import`.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// The database directory (created if empty).
    #[arg(long)]
    db: PathBuf,
    /// The CSV file.
    #[arg(long)]
    csv: PathBuf,
    /// The table to write.
    #[arg(long)]
    table: String,
    /// The 0-based column holding each row's key.
    #[arg(long)]
    key_column: usize,
    /// Rows per commit.
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// The first row is a header.
    #[arg(long)]
    header: bool,
}

/// Options of `pagemesh generate`.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// Where to write the CSV.
    #[arg(long)]
    out: PathBuf,
    /// Records (default: the full 106,178-record set).
    #[arg(long, default_value_t = PricePaid::DEFAULT_COUNT)]
    count: u64,
    /// Seed.
    #[arg(long, default_value_t = PricePaid::DEFAULT_SEED)]
    seed: u64,
}

type BoxError = Box<dyn std::error::Error>;

pub fn generate(args: &GenerateArgs) -> Result<(), BoxError> {
    let file =
        File::create(&args.out).map_err(|e| format!("create {}: {e}", args.out.display()))?;
    let mut out = BufWriter::new(file);
    let bytes = PricePaid::new(args.seed, args.count).write_csv(&mut out)?;
    out.flush()?;
    println!(
        "wrote {} price-paid records ({bytes} bytes) to {}",
        args.count,
        args.out.display()
    );
    Ok(())
}

/// Commits one batch durably; a failure says how many rows are safely in (every earlier batch
/// was durable when its commit returned), so the user knows where to resume.
fn commit(db: &Database, batch: &WriteBatch, imported: u64) -> Result<(), BoxError> {
    match db.commit(batch, Durability::Durable) {
        Ok(_) => Ok(()),
        Err(error) => Err(format!(
            "commit failed after {imported} rows were imported durably: {error}"
        )
        .into()),
    }
}

pub fn import(args: &ImportArgs) -> Result<(), BoxError> {
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let file = File::open(&args.csv).map_err(|e| format!("open {}: {e}", args.csv.display()))?;
    let db = Database::open(&args.db, Options::new())?;
    let started = Instant::now();
    let (mut imported, mut bad) = (0u64, 0u64);
    let mut batch = WriteBatch::new();
    for row in read_rows(BufReader::new(file), args.key_column, args.header) {
        match row {
            Ok(row) => {
                if let Err(error) = batch.put(&args.table, &row.key, &row.value) {
                    eprintln!("{}:{}: {error}", args.csv.display(), row.line);
                    bad += 1;
                    continue;
                }
            }
            Err(error) => {
                eprintln!("{}:{}: {error}", args.csv.display(), error.line());
                bad += 1;
                continue;
            }
        }
        if batch.len() == args.batch {
            commit(&db, &batch, imported)?;
            imported += batch.len() as u64;
            batch = WriteBatch::new();
        }
    }
    if !batch.is_empty() {
        commit(&db, &batch, imported)?;
        imported += batch.len() as u64;
    }
    let elapsed = started.elapsed();
    println!(
        "imported {imported} rows into table {:?} in {elapsed:.2?} ({:.0} rows/s); {bad} bad rows",
        args.table,
        imported as f64 / elapsed.as_secs_f64()
    );
    if bad > 0 {
        return Err(format!("{bad} bad rows were reported above and not imported").into());
    }
    Ok(())
}
