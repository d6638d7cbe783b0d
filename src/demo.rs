//! `pagemesh demo`: the replication log at work, verified.
//!
//! Writer threads append records of 64–1024 bytes (content derived from writer and index) into a
//! file-backed ring; every 16th commit waits until it is in the committed log, as a durability
//! wait would. Two followers, each with its own cursor, read the pages as they seal, reassemble
//! the records, check every record's content, and fold `(seq, bytes)` into a digest. Progress
//! bars show each follower's records and lag. At the end the followers' digests and counts must
//! equal each other and the writers' totals, and a reopen of the ring must recover exactly the
//! committed pages. The mesh demo (a primary and replicas over sockets) replaces this with the
//! replication issue.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pagemesh::log::{Cursor, Log, LogOptions, RecordReader};

/// Options of `pagemesh demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Records to append.
    #[arg(long, default_value_t = 2_000_000)]
    records: u64,
    /// Writer threads.
    #[arg(long, default_value_t = 4)]
    writers: u64,
    /// Directory for the ring (a temporary one if omitted).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a follower saw.
#[derive(Debug, PartialEq, Eq)]
struct Digest {
    records: u64,
    bytes: u64,
    hash: u32,
}

fn record(writer: u64, index: u64) -> Vec<u8> {
    let len = 64 + ((writer * 7919 + index * 104_729) % 961) as usize;
    let mut bytes = Vec::with_capacity(len);
    bytes.extend_from_slice(&writer.to_le_bytes());
    bytes.extend_from_slice(&index.to_le_bytes());
    bytes.extend((16..len).map(|i| (i as u64 ^ index ^ writer) as u8));
    bytes
}

fn check(bytes: &[u8]) -> Result<(), BoxError> {
    let writer = u64::from_le_bytes(bytes[..8].try_into()?);
    let index = u64::from_le_bytes(bytes[8..16].try_into()?);
    if bytes != record(writer, index) {
        return Err(format!("record {writer}/{index} arrived damaged").into());
    }
    Ok(())
}

/// Follows the log until `total` records were read; returns its digest.
fn follow(mut cursor: Cursor, total: u64, bar: &ProgressBar) -> Result<Digest, BoxError> {
    let mut reader = RecordReader::new();
    let mut digest = Digest {
        records: 0,
        bytes: 0,
        hash: 0,
    };
    let mut failure = None;
    while digest.records < total {
        if !cursor.wait_ready(Some(Instant::now() + Duration::from_secs(30)))? {
            return Err(format!("follower stalled at {} records", digest.records).into());
        }
        while let Some(page) = cursor.next_ready()? {
            reader.feed(page, |r| {
                if let Err(e) = check(&r.bytes) {
                    failure.get_or_insert(e);
                }
                digest.records += 1;
                digest.bytes += r.bytes.len() as u64;
                digest.hash = crc32c::crc32c_append(digest.hash, &r.seq.to_le_bytes());
                digest.hash = crc32c::crc32c_append(digest.hash, &r.bytes);
            })?;
        }
        if let Some(e) = failure.take() {
            return Err(e);
        }
        let read = cursor.position();
        cursor.release(read);
        bar.set_position(digest.records);
        bar.set_message(format!("lag {} pages", cursor.lag_pages()));
    }
    Ok(digest)
}

/// Runs the demo; an error means a check failed.
pub fn run(args: &Args) -> Result<(), BoxError> {
    let temp;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let (writers, per_writer) = (
        args.writers.max(1),
        args.records.max(1) / args.writers.max(1),
    );
    let total = writers * per_writer;
    let log = Log::open(&dir, LogOptions::new().slots(1024))?;
    println!(
        "pagemesh demo: {writers} writers append {total} records to {}",
        dir.display()
    );
    println!("               two followers read the pages as they seal and verify every record");

    let bars = MultiProgress::new();
    let style =
        ProgressStyle::with_template("{prefix:>12} {bar:40} {pos:>8}/{len} {per_sec:>12} {msg}")?;
    let bar = |name: &str| {
        let b = bars.add(
            ProgressBar::new(total)
                .with_style(style.clone())
                .with_prefix(name.to_string()),
        );
        b.enable_steady_tick(Duration::from_millis(100));
        b
    };
    let (written_bar, a_bar, b_bar) = (bar("written"), bar("follower A"), bar("follower B"));
    let (cursor_a, cursor_b) = (log.cursor(0)?, log.cursor(0)?);
    let written = AtomicU64::new(0);
    let started = Instant::now();

    let (a, b) = std::thread::scope(|s| -> Result<_, BoxError> {
        let a = s.spawn(|| follow(cursor_a, total, &a_bar));
        let b = s.spawn(|| follow(cursor_b, total, &b_bar));
        let writer_threads: Vec<_> = (0..writers)
            .map(|w| {
                let (log, written, written_bar) = (&log, &written, &written_bar);
                s.spawn(move || -> Result<(), BoxError> {
                    for i in 0..per_writer {
                        let pos = log.append(&record(w, i))?;
                        if i % 16 == 15 {
                            log.wait_committed(pos, None)?;
                        }
                        let n = written.fetch_add(1, Ordering::Relaxed) + 1;
                        if n % 1024 == 0 {
                            written_bar.set_position(n);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        for w in writer_threads {
            w.join().map_err(|_| "writer panicked")??;
        }
        written_bar.set_position(total);
        log.seal();
        let a = a.join().map_err(|_| "follower panicked")??;
        let b = b.join().map_err(|_| "follower panicked")??;
        Ok((a, b))
    })?;
    let elapsed = started.elapsed();
    for b in [&written_bar, &a_bar, &b_bar] {
        b.finish();
    }

    let committed = log.committed_lsn();
    drop(log);
    let reopened = Log::open(&dir, LogOptions::new().slots(1024))?;
    let recovered = reopened.recovered();

    println!(
        "appended {total} records ({:.1} MB) in {:.2?}: {:.0} records/s, {:.1} MB/s, {committed} pages",
        a.bytes as f64 / 1e6,
        elapsed,
        total as f64 / elapsed.as_secs_f64(),
        a.bytes as f64 / 1e6 / elapsed.as_secs_f64(),
    );
    println!("follower A: {} records, digest {:08x}", a.records, a.hash);
    println!("follower B: {} records, digest {:08x}", b.records, b.hash);
    println!(
        "reopened ring: recovered pages {}..{}",
        recovered.start_lsn, recovered.end_lsn
    );
    if a != b || a.records != total {
        return Err(format!("followers disagree: {a:?} vs {b:?}, {total} written").into());
    }
    if recovered.end_lsn != committed {
        return Err(format!(
            "reopen recovered to page {}, committed was {committed}",
            recovered.end_lsn
        )
        .into());
    }
    println!(
        "verified: both followers read all {total} records intact, identical, in the same order"
    );
    Ok(())
}
