//! `pagemesh import` and `pagemesh generate`: CSV in and out of a database.
//!
//! Import reads rows with [`pagemesh_tools::workload::csv_import`], keyed by one column, and commits
//! them with `Durable` in `WriteBatch`es of `--batch` rows. It accounts for every line of the
//! file: each row read is imported, or reported on stderr by its line (or range of lines) and
//! counted as a rejected duplicate, a bad row or a row too large; the closing summary gives the
//! counts, and the command fails if any row was not imported, saying how many rows are in durably.
//!
//! # Rules
//!
//! - **Too large.** One batch is one log record, and a record may take at most half the ring
//!   (`Log::record_len_max`). The importer sizes each batch as core encodes it (see
//!   `core/src/record.rs`) and commits a batch before a row would push it past the limit, so a
//!   large but legal row never fails a batch; a row that cannot fit a record even alone is
//!   reported with its line and skipped.
//! - **Duplicate keys** are found in the file itself: every key written and the line of the row
//!   that holds it are kept in memory: by the layout of a `HashMap<Box<[u8]>, u64>` (24 bytes an
//!   entry, a control byte, up to twice the entries for growth, and the key's own allocation),
//!   an estimated 80 bytes plus the key's length per distinct key, some 12 MB for the 106,178
//!   keys of the price paid set. A later row with the same key is
//!   reported with both lines and, by `--on-duplicate`, rejected (`reject`, the default: the
//!   first row stays and the command fails) or imported over the earlier one (`last-wins`:
//!   reported, and not a failure). Keys already in the table before the import are not checked:
//!   for an import into an empty table, the summary's distinct keys written is the table's count.
//! - **Resume.** Each batch also puts, atomically with its rows, a marker in the table
//!   `pagemesh.import` under the destination table's name ([`marker`] gives the layout): the byte
//!   offset and line where the committed rows end, a crc32c of the file up to there, the counts so
//!   far and the options. `--resume` re-reads the file from its start without writing, which
//!   rebuilds the duplicate index and the counts, checks at the marker's offset that the crc32c,
//!   line and counts are the ones recorded (refusing a changed file or other options), and imports
//!   from the first row after it. Without `--resume`, a table whose marker says its import did not
//!   reach the end of its file is refused with a message naming `--resume`; after an import that
//!   finished, a new import into the table may start (and replaces the marker). `--resume` with no
//!   marker starts at line 1.
//! - **Progress.** When stderr is a terminal, a progress bar shows bytes read, rows, rows/s and
//!   rows imported durably; otherwise nothing is drawn. Each commit is also logged at `debug`
//!   (`RUST_LOG=pagemesh::import=debug`), which the resume test uses to kill an import mid-way.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pagemesh_core::record::KEY_LEN_MAX;
use pagemesh_core::{Database, Durability, Options, WriteBatch};
use pagemesh_tools::workload::csv_import::{read_rows, ImportRow, Lines, Position, RowError};
use pagemesh_tools::workload::price_paid::PricePaid;

pub mod marker;

use marker::{Counts, Marker, MarkerOptions, OnDuplicate, MARKER_LEN, MARKER_TABLE};

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
    /// Rows per commit (a batch is committed earlier if it would outgrow one log record).
    #[arg(long, default_value_t = 1000)]
    batch: usize,
    /// The first row is a header.
    #[arg(long)]
    header: bool,
    /// What to do with a row whose key an earlier row of the file already wrote.
    #[arg(long, value_enum, default_value_t = OnDuplicate::Reject)]
    on_duplicate: OnDuplicate,
    /// Continue an interrupted import of the same file after its last durable row.
    #[arg(long)]
    resume: bool,
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

/// Why `pagemesh import` stopped or failed. Each names the file (and line) or table concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// `--batch 0`.
    #[error("--batch must be at least 1")]
    BatchZero,
    /// The destination table is the markers' own table, or a name core refuses.
    #[error("cannot import into table {table:?}: {why}")]
    Table {
        /// The table asked for.
        table: String,
        /// Why not.
        why: String,
    },
    /// The CSV file cannot be opened.
    #[error("open {path}: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The database cannot be opened or read.
    #[error("database {path}: {source}")]
    Database {
        /// The database directory.
        path: PathBuf,
        /// The error.
        source: pagemesh_core::Error,
    },
    /// The table's import marker is damaged.
    #[error("database {path}: the import marker of table {table:?} cannot be read: {source}")]
    Marker {
        /// The database directory.
        path: PathBuf,
        /// The destination table.
        table: String,
        /// What is wrong.
        source: marker::MarkerError,
    },
    /// An import into the table stopped before the end of its file.
    #[error(
        "table {table:?} holds an unfinished import ({rows} rows imported durably, through line \
         {line} of its file); run again with --resume to continue it"
    )]
    Unfinished {
        /// The destination table.
        table: String,
        /// Rows the earlier import committed.
        rows: u64,
        /// The line its committed rows reach.
        line: u64,
    },
    /// `--resume` with options that choose other rows than the earlier run's.
    #[error(
        "{path}: the earlier import used {earlier:?}; resume it with the same --key-column, \
         --header and --on-duplicate"
    )]
    OptionsDiffer {
        /// The CSV file.
        path: PathBuf,
        /// The earlier run's options.
        earlier: MarkerOptions,
    },
    /// `--resume` against a file whose first bytes are not the ones the earlier run imported.
    #[error(
        "{path}: not the file the earlier import read: {why} (the earlier import committed its \
         first {} bytes, through line {}, crc32c {:#010x}); refusing to resume",
        recorded.offset, recorded.line, recorded.crc32c
    )]
    FileChanged {
        /// The CSV file.
        path: PathBuf,
        /// Where the earlier import's committed rows end.
        recorded: Position,
        /// What differs.
        why: &'static str,
    },
    /// `--resume`: re-reading the committed prefix counted other outcomes than the earlier run.
    #[error(
        "{path}: re-reading through line {line} counted {found:?}, but the earlier import \
         recorded {recorded:?} (was the log's ring resized?); refusing to resume"
    )]
    CountsDiffer {
        /// The CSV file.
        path: PathBuf,
        /// The line of the marker.
        line: u64,
        /// This run's counts.
        found: Box<Counts>,
        /// The marker's counts.
        recorded: Box<Counts>,
    },
    /// A commit failed.
    #[error("{path}: commit of the rows of {lines} failed; {durable} rows are imported durably: {source}")]
    Commit {
        /// The CSV file.
        path: PathBuf,
        /// The lines of the batch.
        lines: Lines,
        /// Rows imported by earlier commits.
        durable: u64,
        /// The error.
        source: pagemesh_core::Error,
    },
    /// Reading the file failed.
    #[error("{path}: {source}; {durable} rows are imported durably")]
    Read {
        /// The CSV file.
        path: PathBuf,
        /// Rows imported durably.
        durable: u64,
        /// The error, with its line.
        source: RowError,
    },
    /// The import finished, and some rows were reported and not imported.
    #[error(
        "{path}: {not_imported} rows were not imported (each reported above, or by the earlier \
         run for the {reported_earlier} of them before the resume point); {durable} rows are \
         imported durably"
    )]
    RowsNotImported {
        /// The CSV file.
        path: PathBuf,
        /// Rows rejected.
        not_imported: u64,
        /// Rows rejected before the resume point, reported by the earlier run.
        reported_earlier: u64,
        /// Rows imported durably.
        durable: u64,
    },
}

/// Why one row was not imported as it is (or, for `last-wins`, what it replaced).
#[derive(Debug, thiserror::Error)]
enum RowProblem {
    #[error(transparent)]
    Read(#[from] RowError),
    #[error("line {line}: the key is {len} bytes; keys may be at most {KEY_LEN_MAX}")]
    KeyTooLong { line: u64, len: usize },
    #[error(
        "line {line}: the row takes {len} bytes in a log record, over the limit of {max} bytes \
         (half the log's ring): not imported"
    )]
    TooLarge { line: u64, len: usize, max: usize },
    #[error("line {line}: duplicate key {key}, first written by line {first_line}: not imported")]
    DuplicateRejected {
        line: u64,
        key: String,
        first_line: u64,
    },
    #[error("line {line}: duplicate key {key}: replaces the row of line {replaced_line}")]
    DuplicateReplaced {
        line: u64,
        key: String,
        replaced_line: u64,
    },
}

/// Bytes of a record's header: version, kind, hlc, op count (`core/src/record.rs`).
const RECORD_HEADER_LEN: usize = 14;

/// Bytes one put adds to a batch's record: tag, table name length and name, key length and key,
/// value length and value (`core/src/record.rs`; a unit test checks it against core's builder).
fn put_len(table: &str, key: &[u8], value: &[u8]) -> usize {
    1 + 1 + table.len() + 2 + key.len() + 4 + value.len()
}

/// A key as it is shown in a report: quoted, escaped, cut after 64 bytes.
fn show_key(key: &[u8]) -> String {
    const SHOWN_BYTES_MAX: usize = 64;
    let shown = String::from_utf8_lossy(&key[..key.len().min(SHOWN_BYTES_MAX)]);
    let cut = if key.len() > SHOWN_BYTES_MAX {
        "…"
    } else {
        ""
    };
    format!("{shown:?}{cut}")
}

/// The progress bar: drawn on stderr only when it is a terminal. Reports of bad rows go through
/// it so that they do not tear the bar.
struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
}

/// Rows between two updates of the bar's message.
const PROGRESS_ROWS: u64 = 4096;

impl Progress {
    fn new(file_bytes: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::with_draw_target(Some(file_bytes), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template("{wide_bar} {bytes}/{total_bytes} {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        Self {
            bar,
            started: Instant::now(),
        }
    }

    fn update(&self, position: &Position, counts: &Counts, durable: &Counts) {
        let Some(bar) = &self.bar else { return };
        bar.set_position(position.offset);
        bar.set_message(format!(
            "{} rows, {:.0} rows/s, {} durable",
            counts.rows_read,
            counts.rows_read as f64 / self.started.elapsed().as_secs_f64().max(1e-3),
            durable.imported
        ));
    }

    fn report(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{message}")),
            None => eprintln!("{message}"),
        }
    }

    fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One import's state: the batch being built, the counts, the duplicate index, and, while
/// `--resume` re-reads the committed prefix, the marker to reach.
struct Importer<'a> {
    args: &'a ImportArgs,
    db: &'a Database,
    record_len_max: usize,
    batch: WriteBatch,
    /// Encoded bytes of `batch` with its marker put.
    batch_bytes: usize,
    batch_rows: usize,
    batch_lines: Option<Lines>,
    counts: Counts,
    durable: Counts,
    /// Each key written and the line of the row now holding it.
    keys: HashMap<Box<[u8]>, u64>,
    replaying: Option<Marker>,
    progress: Progress,
}

impl<'a> Importer<'a> {
    fn options(&self) -> MarkerOptions {
        MarkerOptions {
            key_column: self.args.key_column as u64,
            header: self.args.header,
            on_duplicate: self.args.on_duplicate,
        }
    }

    fn empty_batch_bytes(&self) -> usize {
        RECORD_HEADER_LEN + put_len(MARKER_TABLE, self.args.table.as_bytes(), &[0; MARKER_LEN])
    }

    /// Handles one item of the reader; `before` and `after` are the reader's positions around it.
    fn handle(
        &mut self,
        item: Result<ImportRow, RowError>,
        before: Position,
        after: Position,
    ) -> Result<(), ImportError> {
        match item {
            Ok(row) => self.handle_row(row, before)?,
            Err(error @ RowError::Io { .. }) => {
                self.commit(before, false)?;
                return Err(ImportError::Read {
                    path: self.args.csv.clone(),
                    durable: self.durable.imported,
                    source: error,
                });
            }
            Err(error) => self.reject(RowProblem::Read(error), |counts| &mut counts.bad),
        }
        if self.batch_rows >= self.args.batch {
            self.commit(after, false)?;
        }
        if self.counts.rows_read.is_multiple_of(PROGRESS_ROWS) {
            self.progress.update(&after, &self.counts, &self.durable);
        }
        self.check_replayed(after)
    }

    /// Counts a row not imported (as `count`) and reports it, unless replaying.
    fn reject(&mut self, problem: RowProblem, count: impl FnOnce(&mut Counts) -> &mut u64) {
        self.counts.rows_read += 1;
        *count(&mut self.counts) += 1;
        self.report(&problem);
    }

    fn report(&self, problem: &RowProblem) {
        if self.replaying.is_none() {
            let path = self.args.csv.display();
            self.progress.report(&format!("{path}: {problem}"));
        }
    }

    fn handle_row(&mut self, row: ImportRow, before: Position) -> Result<(), ImportError> {
        let line = row.line;
        if let Some(problem) = self.size_problem(&row) {
            let too_large = matches!(problem, RowProblem::TooLarge { .. });
            self.reject(problem, |counts| match too_large {
                true => &mut counts.too_large,
                false => &mut counts.bad,
            });
            return Ok(());
        }
        let replaced_line = self.keys.get(&row.key[..]).copied();
        if let (Some(first_line), OnDuplicate::Reject) = (replaced_line, self.args.on_duplicate) {
            let key = show_key(&row.key);
            let problem = RowProblem::DuplicateRejected {
                line,
                key,
                first_line,
            };
            self.reject(problem, |counts| &mut counts.duplicates_rejected);
            return Ok(());
        }
        let len = put_len(&self.args.table, &row.key, &row.value);
        if self.batch_bytes + len > self.record_len_max {
            self.commit(before, false)?;
        }
        if let Some(replaced_line) = replaced_line {
            let key = show_key(&row.key);
            self.report(&RowProblem::DuplicateReplaced {
                line,
                key,
                replaced_line,
            });
        }
        self.put(row, len)?;
        self.counts.rows_read += 1;
        self.counts.imported += 1;
        match replaced_line {
            Some(_) => self.counts.duplicates_replaced += 1,
            None => self.counts.keys_written += 1,
        }
        Ok(())
    }

    /// A key too long for the store, or a row too large for any batch.
    fn size_problem(&self, row: &ImportRow) -> Option<RowProblem> {
        let line = row.line;
        if row.key.len() > KEY_LEN_MAX {
            let len = row.key.len();
            return Some(RowProblem::KeyTooLong { line, len });
        }
        let len = put_len(&self.args.table, &row.key, &row.value);
        let max = self.record_len_max;
        (self.empty_batch_bytes() + len > max).then_some(RowProblem::TooLarge { line, len, max })
    }

    /// Adds the row to the batch (unless replaying) and to the duplicate index.
    fn put(&mut self, row: ImportRow, len: usize) -> Result<(), ImportError> {
        if self.replaying.is_none() {
            if let Err(source) = self.batch.put(&self.args.table, &row.key, &row.value) {
                return Err(ImportError::Commit {
                    path: self.args.csv.clone(),
                    lines: Lines::one(row.line),
                    durable: self.durable.imported,
                    source,
                });
            }
            self.batch_bytes += len;
            self.batch_rows += 1;
            let lines = self.batch_lines.get_or_insert(Lines::one(row.line));
            lines.last = row.line;
        }
        self.keys.insert(row.key.into_boxed_slice(), row.line);
        Ok(())
    }

    /// Commits the batch with a marker at `position` (where its last row ends) and waits until
    /// it is durable and applied. Nothing is written while replaying.
    ///
    /// `Durable` alone returns once the log ring has the batch on disk; the store applies it
    /// later, and a full disk would surface only then. Waiting for it to be applied too (an
    /// empty `Applied` commit after it: applying in log order, it implies the batch) keeps the
    /// import's report exact: a batch that does not fit fails here, and every row reported
    /// imported durably is in the store.
    fn commit(&mut self, position: Position, finished: bool) -> Result<(), ImportError> {
        if self.replaying.is_some() {
            return Ok(());
        }
        let marker = Marker {
            options: self.options(),
            position,
            counts: self.counts,
            finished,
        };
        let lines = self.batch_lines.unwrap_or(Lines::one(position.line));
        let committed = self
            .batch
            .put(MARKER_TABLE, self.args.table.as_bytes(), &marker.encode())
            .map(|_| ())
            .and_then(|()| self.db.commit(&self.batch, Durability::Durable).map(|_| ()))
            .and_then(|()| {
                let applied = pagemesh_core::WriteBatch::new();
                self.db.commit(&applied, Durability::Applied).map(|_| ())
            });
        if let Err(source) = committed {
            return Err(ImportError::Commit {
                path: self.args.csv.clone(),
                lines,
                durable: self.durable.imported,
                source,
            });
        }
        self.durable = self.counts;
        tracing::debug!(
            rows_durable = self.durable.imported,
            line = position.line,
            offset = position.offset,
            finished,
            "import batch committed"
        );
        self.batch = self.db.batch();
        self.batch_bytes = self.empty_batch_bytes();
        self.batch_rows = 0;
        self.batch_lines = None;
        self.progress.update(&position, &self.counts, &self.durable);
        Ok(())
    }

    /// While replaying: at the marker's offset, checks that the file and the counts are the ones
    /// the earlier run recorded, then goes live.
    fn check_replayed(&mut self, position: Position) -> Result<(), ImportError> {
        let Some(marker) = self.replaying else {
            return Ok(());
        };
        let recorded = marker.position;
        if position.offset < recorded.offset {
            return Ok(());
        }
        let why = if position.offset > recorded.offset {
            Some("no row of it ends where the earlier import's committed rows end")
        } else if position.crc32c != recorded.crc32c {
            Some("its bytes differ")
        } else if position.line != recorded.line {
            Some("its lines differ")
        } else {
            None
        };
        if let Some(why) = why {
            let path = self.args.csv.clone();
            return Err(ImportError::FileChanged {
                path,
                recorded,
                why,
            });
        }
        if self.counts != marker.counts {
            return Err(ImportError::CountsDiffer {
                path: self.args.csv.clone(),
                line: recorded.line,
                found: Box::new(self.counts),
                recorded: Box::new(marker.counts),
            });
        }
        self.replaying = None;
        self.durable = self.counts;
        Ok(())
    }

    /// At the end of the file: the last commit (its marker says the import finished), the
    /// summary, and the verdict.
    fn finish(mut self, end: Position, resumed: Option<Marker>) -> Result<(), ImportError> {
        self.check_replayed(end)?;
        if let Some(marker) = self.replaying {
            return Err(ImportError::FileChanged {
                path: self.args.csv.clone(),
                recorded: marker.position,
                why: "it ends before the earlier import's committed rows do",
            });
        }
        self.commit(end, true)?;
        self.progress.finish();
        self.print_summary(resumed.map(|marker| marker.position.line));
        let not_imported = self.counts.not_imported();
        if not_imported > 0 {
            return Err(ImportError::RowsNotImported {
                path: self.args.csv.clone(),
                not_imported,
                reported_earlier: resumed.map_or(0, |marker| marker.counts.not_imported()),
                durable: self.durable.imported,
            });
        }
        Ok(())
    }

    fn print_summary(&self, resumed_at: Option<u64>) {
        let counts = &self.counts;
        let elapsed = self.progress.started.elapsed();
        let earlier = match resumed_at {
            Some(line) => format!(" (resumed: rows before line {line} were imported earlier)"),
            None => String::new(),
        };
        println!(
            "{}: {} rows read; {} imported into table {:?} ({} keys written, {} replacing an \
             earlier row); {} duplicates rejected, {} bad, {} too large; {elapsed:.2?}, {:.0} \
             rows/s{earlier}",
            self.args.csv.display(),
            counts.rows_read,
            counts.imported,
            self.args.table,
            counts.keys_written,
            counts.duplicates_replaced,
            counts.duplicates_rejected,
            counts.bad,
            counts.too_large,
            counts.rows_read as f64 / elapsed.as_secs_f64().max(1e-3),
        );
    }
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

pub fn import(args: &ImportArgs) -> Result<(), BoxError> {
    Ok(run(args)?)
}

/// Refuses `--batch 0`, the markers' table and names core refuses.
fn check_args(args: &ImportArgs) -> Result<(), ImportError> {
    if args.batch == 0 {
        return Err(ImportError::BatchZero);
    }
    let table = args.table.clone();
    if table == MARKER_TABLE {
        let why = "it holds the import markers".to_string();
        return Err(ImportError::Table { table, why });
    }
    if let Err(error) = WriteBatch::new().put(&table, b"k", b"") {
        let why = error.to_string();
        return Err(ImportError::Table { table, why });
    }
    Ok(())
}

/// The destination table's marker, if an import into it ever committed a batch.
fn read_marker(db: &Database, args: &ImportArgs) -> Result<Option<Marker>, ImportError> {
    let db_error = |source| ImportError::Database {
        path: args.db.clone(),
        source,
    };
    let snapshot = db.read().map_err(db_error)?;
    let Some(stored) = snapshot
        .get(MARKER_TABLE, args.table.as_bytes())
        .map_err(db_error)?
    else {
        return Ok(None);
    };
    Marker::decode(stored.bytes)
        .map(Some)
        .map_err(|source| ImportError::Marker {
            path: args.db.clone(),
            table: args.table.clone(),
            source,
        })
}

/// Applies the resume rule: the marker to replay up to, if any.
fn marker_to_resume(
    earlier: Option<Marker>,
    args: &ImportArgs,
    options: MarkerOptions,
) -> Result<Option<Marker>, ImportError> {
    match earlier {
        Some(marker) if args.resume => {
            if marker.options != options {
                return Err(ImportError::OptionsDiffer {
                    path: args.csv.clone(),
                    earlier: marker.options,
                });
            }
            Ok(Some(marker))
        }
        Some(marker) if !marker.finished => Err(ImportError::Unfinished {
            table: args.table.clone(),
            rows: marker.counts.imported,
            line: marker.position.line,
        }),
        None if args.resume => {
            eprintln!(
                "{}: no earlier import into table {:?} to resume: starting at line 1",
                args.csv.display(),
                args.table
            );
            Ok(None)
        }
        _ => Ok(None),
    }
}

fn run(args: &ImportArgs) -> Result<(), ImportError> {
    check_args(args)?;
    let open_error = |source| ImportError::Open {
        path: args.csv.clone(),
        source,
    };
    let file = File::open(&args.csv).map_err(open_error)?;
    let file_bytes = file.metadata().map_err(open_error)?.len();
    let db = Database::open(&args.db, Options::new()).map_err(|source| ImportError::Database {
        path: args.db.clone(),
        source,
    })?;
    let options = MarkerOptions {
        key_column: args.key_column as u64,
        header: args.header,
        on_duplicate: args.on_duplicate,
    };
    let replaying = marker_to_resume(read_marker(&db, args)?, args, options)?;
    let resumed = replaying;
    let mut importer = Importer {
        args,
        db: &db,
        record_len_max: db.plumbing().log().record_len_max(),
        batch: db.batch(),
        batch_bytes: 0,
        batch_rows: 0,
        batch_lines: None,
        counts: Counts::default(),
        // While replaying, what the earlier run made durable is what a failure should report.
        durable: replaying.map_or(Counts::default(), |marker| marker.counts),
        keys: HashMap::new(),
        replaying,
        progress: Progress::new(file_bytes),
    };
    importer.batch_bytes = importer.empty_batch_bytes();
    importer.check_replayed(Position::START)?;
    let mut rows = read_rows(file, args.key_column, args.header);
    let mut before = rows.position();
    while let Some(item) = rows.next() {
        let after = rows.position();
        importer.handle(item, before, after)?;
        before = after;
    }
    importer.finish(before, resumed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagemesh_core::RecordBuilder;

    /// The importer's batch sizing is core's encoding, byte for byte.
    #[test]
    fn put_len_matches_the_record_builder() {
        let mut builder = RecordBuilder::default();
        let mut expected = RECORD_HEADER_LEN;
        assert_eq!(builder.encoded_len(), expected);
        for (table, key, value) in [
            ("t", &b"k"[..], &b""[..]),
            ("price_paid", b"{GUID}", &[7u8; 1000][..]),
            (MARKER_TABLE, b"price_paid", &[0u8; MARKER_LEN][..]),
        ] {
            builder.put(table, key, value).unwrap();
            expected += put_len(table, key, value);
            assert_eq!(builder.encoded_len(), expected);
        }
    }

    #[test]
    fn keys_are_shown_quoted_and_cut() {
        assert_eq!(show_key(b"a\"b"), r#""a\"b""#);
        let long = show_key(&[b'x'; 100]);
        assert!(long.ends_with("\"…") && long.len() < 80, "{long}");
    }
}
