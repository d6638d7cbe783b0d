//! `pagemesh demo`: a primary and two replicas on loopback, a real load, and a DIFF.
//!
//! Three nodes run in this process, each with its own network thread and data directory. The
//! primary serves its database with two synchronous replicas; each replica bootstraps from a
//! snapshot and then follows the primary's log over TCP (io_uring, or epoll if the kernel forbids
//! it). The land-registry-shaped data set is loaded in batches, every batch committed
//! `Replicated(2)`: it returns once both replicas have *received* its pages, before they replay
//! them. Progress bars show the primary's commits and each replica's applied records and lag.
//! At the end every replica is compared with the primary entry by entry (table, key, version,
//! bytes): the demo exits 0 only if they are identical.
//!
//! Then, to set the end-to-end figure against what this machine allows, the demo loads the same
//! records with raw heed into one fresh LMDB environment per node, all at once on parallel
//! threads, in synced transactions as large as the primary's largest apply group: the LMDB work
//! the three nodes do, and nothing else (no log, no network, no replica ingest).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pagemesh::core::{Database, Durability, Options, WriteBatch};
use pagemesh::net::TransportKind;
use pagemesh::{Node, Replica};
use pagemesh_tools::workload::PricePaid;

/// Options of `pagemesh demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Records of the land-registry-shaped set to load.
    #[arg(long, default_value_t = PricePaid::DEFAULT_COUNT)]
    records: u64,
    /// Records per commit.
    #[arg(long, default_value_t = 50)]
    batch: usize,
    /// Replicas (all synchronous).
    #[arg(long, default_value_t = 2)]
    replicas: usize,
    /// Commits kept in flight by the loader.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Socket event loop: auto, uring or epoll.
    #[arg(long, default_value = "auto")]
    transport: TransportKind,
    /// Directory for the nodes' data (a temporary one if omitted).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const TABLE: &str = "price_paid";

/// Runs the demo; `Err` if anything failed or a replica differs.
pub fn run(args: &Args) -> Result<(), BoxError> {
    let temp;
    let dir = match &args.dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::tempdir()?;
            temp.path().to_path_buf()
        }
    };
    let loopback = "127.0.0.1:0".parse()?;
    let primary = Node::builder("primary", dir.join("primary"))
        .listen(loopback)
        .transport(args.transport)
        .open()?;
    let source = primary.local_addr().ok_or("primary is not listening")?;
    let db = primary.open_database("land-registry", Options::new())?;
    let replicas_wanted = u32::try_from(args.replicas)?;
    primary.serve(&db, args.replicas);
    println!(
        "primary listening on {source} ({:?} transport); {} replica(s), all synchronous",
        primary.runtime(),
        args.replicas
    );

    let mut nodes = Vec::new();
    let mut replicas: Vec<Replica> = Vec::new();
    for i in 1..=args.replicas {
        let name = format!("replica-{i}");
        let node = Node::builder(&name, dir.join(&name))
            .transport(args.transport)
            .open()?;
        replicas.push(node.replicate(source, db.uuid(), "land-registry", Options::new())?);
        nodes.push(node);
    }
    wait_for_sync_replicas(&db, args.replicas)?;

    let bars = MultiProgress::new();
    let style = ProgressStyle::with_template(
        "{prefix:>10} {bar:40} {pos:>8}/{len} records {per_sec:>14} {msg}",
    )?;
    let bar = |name: &str| {
        let bar = bars.add(ProgressBar::new(args.records));
        bar.set_style(style.clone());
        bar.set_prefix(name.to_string());
        bar
    };
    let loaded = bar("primary");
    let followers: Vec<ProgressBar> = (1..=args.replicas)
        .map(|i| bar(&format!("replica-{i}")))
        .collect();

    let started = Instant::now();
    let done = AtomicBool::new(false);
    let load_time = std::cell::Cell::new(Duration::ZERO);
    let outcome = std::thread::scope(|s| -> Result<(), BoxError> {
        let watcher = s.spawn(|| watch(&db, &replicas, &followers, args, &done));
        let load = load(&db, args, replicas_wanted, &loaded);
        loaded.finish();
        load_time.set(started.elapsed());
        db.log().seal();
        done.store(true, Ordering::SeqCst);
        let watched = watcher.join().map_err(|_| "watcher panicked")?;
        load.and(watched)
    });
    outcome?;
    let elapsed = started.elapsed();
    for bar in &followers {
        bar.finish();
    }
    // Stats count commits (batches); the line speaks of rows.
    let groups = |stats: pagemesh::core::Stats| {
        format!(
            "{} LMDB groups, largest {} rows",
            stats.groups,
            stats.largest_group_records * args.batch as u64
        )
    };
    println!(
        "every commit acknowledged by both replicas after {:.2} s ({:.0} records/s); primary and replicas applied everything after {:.2} s",
        load_time.get().as_secs_f64(),
        args.records as f64 / load_time.get().as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "loaded {} records in {:.2} s: {:.0} records/s end to end ({} replicas synchronous; primary: {})",
        args.records,
        elapsed.as_secs_f64(),
        args.records as f64 / elapsed.as_secs_f64(),
        args.replicas,
        groups(db.stats()),
    );

    let mut identical = true;
    for (i, replica) in replicas.iter().enumerate() {
        let copy = replica.database().ok_or("replica vanished")?;
        match diff(&db, &copy)? {
            None => println!(
                "replica-{}: identical to the primary ({})",
                i + 1,
                groups(copy.stats())
            ),
            Some(difference) => {
                identical = false;
                println!("replica-{}: DIFFERS: {difference}", i + 1);
            }
        }
    }
    let group_rows = (db.stats().largest_group_records * args.batch as u64).max(1);
    drop(replicas);
    drop(nodes);
    drop(db);
    drop(primary);
    let ceiling = heed_ceiling(&dir, args, 1 + args.replicas, group_rows as usize)?;
    println!(
        "LMDB alone (raw heed, {} copies loaded in parallel, synced transactions of {group_rows} rows): {:.2} s, {:.0} records/s; end to end reached {:.2}x of it",
        1 + args.replicas,
        ceiling.as_secs_f64(),
        args.records as f64 / ceiling.as_secs_f64(),
        ceiling.as_secs_f64() / elapsed.as_secs_f64(),
    );
    if identical {
        println!("every replica is identical to the primary");
        Ok(())
    } else {
        Err("replicas differ from the primary".into())
    }
}

/// Loads the demo's records with raw heed into `copies` fresh environments at once, `group_rows`
/// rows per synced transaction; returns the time the slowest took.
fn heed_ceiling(
    dir: &std::path::Path,
    args: &Args,
    copies: usize,
    group_rows: usize,
) -> Result<Duration, BoxError> {
    let set = PricePaid::new(PricePaid::DEFAULT_SEED, args.records);
    let records: Vec<(Vec<u8>, Vec<u8>)> = set
        .records()
        .map(|record| (record.key.to_vec(), record.line.into_bytes()))
        .collect();
    let scratch = tempfile::tempdir_in(dir)?;
    let started = Instant::now();
    std::thread::scope(|s| {
        let loads: Vec<_> = (0..copies)
            .map(|i| {
                let (dir, records) = (scratch.path().join(format!("heed-{i}")), &records);
                s.spawn(move || {
                    pagemesh_tools::bench::commit::time_heed_load(&dir, records, group_rows)
                })
            })
            .collect();
        for load in loads {
            load.join().map_err(|_| "heed load panicked")??;
        }
        Ok::<_, BoxError>(())
    })?;
    Ok(started.elapsed())
}

fn wait_for_sync_replicas(db: &Database, wanted: usize) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let status = db.replication().status();
        if status.iter().filter(|r| r.sync).count() >= wanted {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "only {} of {wanted} replicas connected within 60 s",
                status.len()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Loads the set in batches, `inflight` commits at a time, each `Replicated(n)`.
fn load(db: &Database, args: &Args, replicas: u32, bar: &ProgressBar) -> Result<(), BoxError> {
    let durability = Durability::Replicated(replicas);
    let mut tickets = VecDeque::new();
    let mut batch = WriteBatch::new();
    let set = PricePaid::new(PricePaid::DEFAULT_SEED, args.records);
    for record in set.records() {
        batch.put(TABLE, &record.key, record.line.as_bytes())?;
        if batch.len() == args.batch {
            tickets.push_back((db.commit_async(&batch, durability)?, batch.len()));
            batch = WriteBatch::new();
        }
        while tickets.len() >= args.inflight.max(1) {
            let (ticket, records) = tickets.pop_front().ok_or("no ticket")?;
            ticket.wait()?;
            bar.inc(records as u64);
        }
    }
    if !batch.is_empty() {
        tickets.push_back((db.commit_async(&batch, durability)?, batch.len()));
    }
    for (ticket, records) in tickets {
        ticket.wait()?;
        bar.inc(records as u64);
    }
    Ok(())
}

/// Updates the replicas' bars until the load is done and the primary and each replica have applied
/// everything the primary received. (`Replicated` commits return once the replicas hold their
/// pages, which can be before the primary's own applier has written them to LMDB.)
fn watch(
    db: &Database,
    replicas: &[Replica],
    bars: &[ProgressBar],
    args: &Args,
    loaded: &AtomicBool,
) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let done = loaded.load(Ordering::SeqCst);
        let primary_lsn = db.received_lsn();
        let mut all_done = done && db.applied_lsn() >= primary_lsn;
        for (replica, bar) in replicas.iter().zip(bars) {
            let Some(copy) = replica.database() else {
                all_done = false;
                continue;
            };
            // Records applied since the replica opened, each a batch (cheap to read, unlike a count).
            let applied = (copy.stats().records * args.batch as u64).min(args.records);
            bar.set_position(applied);
            let lag = primary_lsn.saturating_sub(copy.received_lsn());
            bar.set_message(format!("lag {lag:>4} pages"));
            if !(done && copy.applied_lsn() >= primary_lsn) {
                all_done = false;
            }
        }
        if all_done {
            for bar in bars {
                bar.set_position(args.records);
            }
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err("replicas did not catch up within 10 minutes".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The first difference between two databases, entry by entry over every table.
fn diff(a: &Database, b: &Database) -> Result<Option<String>, BoxError> {
    let (mut tables_a, mut tables_b) = (a.tables(), b.tables());
    tables_a.sort();
    tables_b.sort();
    if tables_a != tables_b {
        return Ok(Some(format!("tables {tables_a:?} vs {tables_b:?}")));
    }
    let (sa, sb) = (a.read()?, b.read()?);
    for table in &tables_a {
        let mut left = sa.prefix(table, b"")?;
        let mut right = sb.prefix(table, b"")?;
        let mut index = 0u64;
        loop {
            match (left.next().transpose()?, right.next().transpose()?) {
                (None, None) => break,
                (Some((key, _)), None) | (None, Some((key, _))) => {
                    return Ok(Some(format!(
                        "table {table}: entry {index} (key {}) on one side only",
                        String::from_utf8_lossy(key)
                    )))
                }
                (Some((ka, va)), Some((kb, vb))) => {
                    if ka != kb || va != vb {
                        return Ok(Some(format!(
                            "table {table}: entry {index}: key {} seq {} vs key {} seq {}",
                            String::from_utf8_lossy(ka),
                            va.seq,
                            String::from_utf8_lossy(kb),
                            vb.seq
                        )));
                    }
                }
            }
            index += 1;
        }
    }
    Ok(None)
}
