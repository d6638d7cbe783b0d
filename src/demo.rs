//! `pagemesh demo`: a primary and its replicas on loopback, a real load, and a DIFF.
//!
//! The nodes run in this process, each with its own network thread and data directory. By
//! default the primary serves its database to two replicas, both synchronous, each of which
//! bootstraps from a snapshot and then follows the primary's log over TCP (io_uring, or epoll if
//! the kernel forbids it). With `--mesh 3x3` the nodes form a grid instead: the primary is a
//! corner, and every other node knows only its neighbours nearer that corner and follows one of
//! them (`Node::replicate_from_any`), so pages travel up to four hops, each node relaying what
//! it holds to the next; receipts travel back the same way, so the primary counts every node
//! although it links to two.
//!
//! The land-registry-shaped data set is loaded in batches, every batch committed
//! `Replicated(n)` for every other node: it returns once all of them have *received* its pages,
//! before they replay them. Progress bars show the primary's commits and each replica's applied
//! records and lag. At the end every replica is compared with the primary entry by entry (table,
//! key, version, bytes): the demo exits 0 only if they are identical. The page transfers per
//! page written (every PAGES frame any replica received, duplicates included) show what the
//! routing cost: N − 1 for a tree, 2E − (N − 1) for flooding with visited lists.
//!
//! Then, to set the end-to-end figure against what this machine allows, the demo loads the same
//! records with raw heed into one fresh LMDB environment per node, all at once on parallel
//! threads, in synced transactions as large as the primary's largest apply group: the LMDB work
//! the nodes do, and nothing else (no log, no network, no replica ingest). Beside the two times
//! it prints the bytes each side wrote to storage (`write_bytes` of `/proc/self/io`): where the
//! disk's write bandwidth bounds both loads, as on the machines this was measured on, the time
//! ratio follows the bytes ratio (stop 33, below).
//!
//! Both times start with the records already made: the set is generated once, before the load,
//! and both loads read it. Until stop 27 the nodes' load generated its records as it went and
//! raw heed's did not: generating the 106,178 records takes one thread 0.20–0.25 s here (three
//! runs), which the nodes' end-to-end time carried and the baseline did not (0.44–0.53x then;
//! 0.51–0.87x, median 0.61x, over eleven runs with the records made first, some under `perf`
//! or with debug logs on).
//!
//! Until stop 29 the end came from the progress watcher, which looked every 50 ms, so the
//! figure carried up to 50 ms of polling; now every node waits for the last commit's receipt
//! (`Database::wait_for`) at once, and the end is when the last of them returns. Over 26 runs
//! after that change: 0.56–1.02x, median 0.70x. Within the timed window the three appliers
//! take 90% of the CPU samples (`perf record -k CLOCK_REALTIME`, cut to the window with the
//! debug log's timestamps); their B-tree work (`mdb_node_search` and the rest) costs what raw
//! heed's does, and the difference is mostly `copy_folio_from_iter_atomic` under LMDB's
//! commit `writev` (27% of an applier's samples in the window, 7% of a heed loader's) for
//! 1.4x the bytes. Skipping the binlog append (a local experiment, not kept) did not move the
//! ratio beyond the noise: five alternated runs each, 0.64–1.14x without, 0.52–1.01x with.
//! Opening the store with `MDB_WRITEMAP` instead (to drop that copy; also not kept) made it
//! worse, 0.27–0.50x against 0.60–0.69x over six alternated runs: write faults and TLB
//! shootdowns, as the ring had (`pagemesh_logpage` ring.rs, Writes).
//!
//! Stop 32: with the appliers 10 nice steps below their openers (`pagemesh_core::APPLY_NICE`),
//! four runs alternated with the build before: 0.58–0.73x (median 0.67x) against 0.51–0.72x
//! (median 0.64x), end to end 0.48–0.53 s against 0.49–0.61 s; a gain within the ratio's
//! noise. Skipping the binlog append again (three alternated runs, not kept): end to end
//! 0.48–0.55 s against 0.61–0.75 s, 0.62–0.74x against 0.59–0.60x. The binlog writes every
//! page a second time, into LMDB, although the ring file already holds it: a ring (or log
//! segments) that *is* the binlog history, as Kafka's log is its data, would remove that
//! write; it would also change the store's format and recovery (DESIGN.md puts the history in
//! `__binlog`), so it is left for an issue of its own. A memory-temperature check (2 GB
//! touched and freed just before each run, so page-cache allocations find pages the VM's host
//! already backs) moved nothing.
//!
//! Stop 33: what bounds the figure is the disk's write bandwidth, and the ratio follows the
//! bytes each side writes. Bytes handed to `writev`/`pwrite64`, per thread, in one run (bpftrace
//! on their returns): each raw-heed loader wrote 71.9 MB; each node wrote 121.6 MB, its applier
//! 97.6 MB (the same table pages, 24 MB of `__binlog` and 1.7 MB else) and its log 24.0 MB (the
//! primary's writer and each replica's network thread, one 4 KB write per page). 216 MB against
//! 365 MB is 0.59 of the bytes; the run's ratio was 0.64, both sides writing at 600–650 MB/s
//! (`dd` of 256 MB with `fdatasync`: 972 MB/s), and a second run gave 0.57 against the same
//! bytes. The nodes are not short of CPU: on-CPU time per thread (bpftrace on `sched_switch`,
//! whose cost stretched that run) put the three appliers at 258–283 ms against the heed
//! loaders' 326–346 ms, and every node thread together at about a third of the two vCPUs over
//! the window. So the ratio could not pass about 0.6 while every page reached the disk twice in
//! the window, from the log and from `__binlog`; writing it once would put the bytes at
//! 71.9 / 97.6 = 0.74. Compressing the binlog's values would not get there: the log's 16 MiB
//! ring, compressed as a file, came to 7.2 MB with `lz4 -1` and 4.4 MB with `zstd -1`, which
//! would leave the bytes at 0.65–0.68, for compression on the applier's path. The change that
//! lifts it is the one above: a log whose segments are the history.
//!
//! What did move it, the same stop: the replicas' ring syncs. Each replica synced its ring every
//! 10 ms (`pagemesh_core::FLUSH_PACE`), so every page it received reached the disk from its log
//! as well as from its `__binlog` within the window, although no commit waits for a replica's
//! log sync (acks are on receipt). Replicas now pace
//! by `pagemesh_core::REPLICA_FLUSH_PACE` (1 s), and a ring slot rewritten between two syncs
//! reaches the disk once. Eight runs alternated with the build before (the nodes' leftover
//! writes synced before raw heed's timer in both): 0.59–0.88x (median 0.72x) against 0.51–0.72x
//! (median 0.63x), end to end 0.44–0.57 s against 0.48–0.68 s. The bytes line counts what was
//! written to files (`write_bytes` counts a page when it turns dirty): 352 MB against 365 MB,
//! the replicas' rewritten slots counted once; the rest of their log pages reach the disk after
//! the window, at their next sync.
//!
//! Whether raw heed pays for running second: twelve runs of an experiment build (not kept) that
//! also loaded raw heed before the nodes, with the same transactions, timed it at 0.29–0.38 s
//! before and 0.30–0.36 s after (slower after in 8 of 12, by 2.5% on the mean): no order
//! effect beyond the noise. Those runs' ratios were 0.60–0.76x (median 0.65x), below the
//! 0.53–0.88x (median 0.72x) of twenty runs of the same build without the extra load: 216 MB
//! more written just before the nodes start costs them too. One binary's ratio moves by 0.3
//! from run to run here; compare medians of alternated runs. Since stop 37 the filesystem is
//! synced before the nodes' timer too, as before raw heed's, so that neither pays for writes
//! that came before it. Run right after `bench commit` or `bench bootstrap` (CI's order;
//! seven alternated pairs) that moved nothing beyond the noise: end to end 0.41–0.49 s against
//! 0.41–0.51 s.
//!
//! Stop 34, what the history written once would be worth now: an experiment build (not kept)
//! that skipped the binlog append, ten runs alternated with the build it came from: end to end
//! median 0.52 s (0.45–0.57) against 0.62 s (0.50–0.87), ratio median 0.76x against 0.71x (raw
//! heed's own time moved between the runs, 0.38 s against 0.42 s median). The history still
//! has to be kept somewhere, so that is the most a log whose segments are the history can
//! give, and only if its segment files are recycled or written once ahead: a 4 KB `pwrite` and
//! `fdatasync`, p50 over 2,000 each, two rounds, cost 96–115 µs over written blocks, 130–157 µs
//! over only fallocated ones and 149–155 µs appending to the file. Applying while the pace
//! lasts, which let the appliers start sooner, did not move it (`pagemesh_core`'s apply
//! module, Pacing).
//!
//! Stop 35: the log's file is now segments, each page written once where its LSN says, so that
//! the log's own writes can become the history (the second half, in core, is to come). A
//! replica's rewritten slots above (stop 33) are gone with the circular file: every page now
//! reaches the disk once. Ten runs alternated with the build before: end to end median 0.615 s
//! (0.47–0.66) against 0.635 s (0.57–0.70), ratio 0.69x against 0.62x, 370 MB written against
//! 353 MB (each node's log writes a quarter ring more at creation). Segments as large as the
//! ring had cost 0.785 s against 0.645 s (`pagemesh_logpage`'s segment module says why).
//!
//! Stop 36: the history is the log's segments (`pagemesh_core`'s binlog module): nothing is
//! appended to `__binlog` any more, and a new segment's blocks are written with zeros only once
//! a commit has waited for a sync, which no commit here does (`pagemesh_logpage`'s segment
//! module, Installing a segment). Eight runs alternated with the build before: end to end
//! median 0.43 s (0.39–0.55) against 0.585 s (0.53–0.62), ratio to raw heed 0.74x (0.66–0.82)
//! against 0.63x (0.56–0.76), 294 MB written against 370 MB. The history in segments with
//! zeros written into every new segment, as before, gained nothing (0.515 s against 0.505 s,
//! ten pairs): the zeros cost what `__binlog` had cost.
//!
//! Stop 38: each applier applies a group's puts and deletes in key order (`pagemesh_core`'s
//! key_order module): consecutive puts then land on neighbouring leaves, still in the CPU's
//! caches, where in log order each walked to a random one. Eight runs alternated with the build
//! before: end to end median 0.380 s (0.37–0.41) against 0.435 s (0.40–0.45), ratio to raw heed
//! 0.85x (0.80–0.89) against 0.77x (0.73–0.85), 286 MB written against 294. Raw heed here still
//! puts in log order, as a user loading these records would; sorted, its synced transactions
//! took 10–28% less (an experiment, four rounds), which is the most the sort can give.
//!
//! Before stop 32's change (one `perf` run, 2 kHz): the replicas acknowledge everything after
//! 0.28–0.34 s, then each node applies until 0.66–0.72 s. Each node applies three full groups
//! of 2,048 pages (37,050 rows), 150–330 ms each with three appliers on two cores, and each
//! applier thread used 1.2–1.9x the CPU of a raw-heed loader thread: the same B-tree work, plus
//! the group's pages appended to `__binlog` and the records decoded, and more bytes written
//! (under `strace`, whose slowdown split the load into 14 groups: 125–132 MB per applier
//! against 72 MB per heed loader). The baseline is three copies of the B-tree work and nothing
//! else; the nodes add the log, the network and the binlog on the same two cores.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use pagemesh::core::{Database, Durability, Options, Receipt, WriteBatch};
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
    /// Replicas (all synchronous), each following the primary.
    #[arg(long, default_value_t = 2, conflicts_with = "mesh")]
    replicas: usize,
    /// A grid of nodes instead, e.g. `3x3`: the primary at a corner, each other node following
    /// a neighbour nearer it.
    #[arg(long)]
    mesh: Option<Grid>,
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

/// A `WIDTHxHEIGHT` grid of nodes.
#[derive(Clone, Copy, Debug)]
pub struct Grid {
    width: usize,
    height: usize,
}

impl std::str::FromStr for Grid {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let parse = |part: &str| {
            part.trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| (1..=16).contains(&n))
        };
        match text.split_once(['x', 'X']) {
            Some((w, h)) => match (parse(w), parse(h)) {
                (Some(width), Some(height)) if width * height >= 2 => Ok(Self { width, height }),
                _ => Err(format!(
                    "{text:?}: sides of 1 to 16 nodes, at least two nodes"
                )),
            },
            None => Err(format!("{text:?}: expected WIDTHxHEIGHT, e.g. 3x3")),
        }
    }
}

/// Who follows whom: each replica's name and the nodes it may follow (indices into the node
/// list, where 0 is the primary), nearest first.
struct Layout {
    replicas: Vec<(String, Vec<usize>)>,
    /// Replicas have replicas of their own: every node listens.
    relays: bool,
}

impl Layout {
    /// Every replica follows the primary.
    fn star(replicas: usize) -> Self {
        Self {
            replicas: (1..=replicas)
                .map(|i| (format!("replica-{i}"), vec![0]))
                .collect(),
            relays: false,
        }
    }

    /// Node `row * width + col` follows its neighbours one hop nearer the corner, the more
    /// central first (so the middle of a 3×3 grid relays to two nodes).
    fn grid(grid: Grid) -> Self {
        let index = |row: usize, col: usize| row * grid.width + col;
        let mut replicas = Vec::new();
        for row in 0..grid.height {
            for col in 0..grid.width {
                if row == 0 && col == 0 {
                    continue;
                }
                let mut near = Vec::new();
                if row > 0 {
                    near.push((row - 1, col));
                }
                if col > 0 {
                    near.push((row, col - 1));
                }
                near.sort_by_key(|&(r, c)| std::cmp::Reverse(r.min(c)));
                let upstreams = near.into_iter().map(|(r, c)| index(r, c)).collect();
                replicas.push((format!("node-{row}-{col}"), upstreams));
            }
        }
        Self {
            replicas,
            relays: true,
        }
    }

    /// Replicas linked to the primary itself (its synchronous links).
    fn primary_links(&self) -> usize {
        self.replicas
            .iter()
            .filter(|(_, upstreams)| upstreams.contains(&0))
            .count()
    }
}

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
    let layout = match args.mesh {
        Some(grid) => Layout::grid(grid),
        None => Layout::star(args.replicas),
    };
    let replica_count = layout.replicas.len();
    let primary_name = if layout.relays { "node-0-0" } else { "primary" };
    // One secret for the cluster: links authenticate as a deployment's would.
    let secret = uuid::Uuid::new_v4().simple().to_string().into_bytes();
    let primary = Node::builder(primary_name, dir.join(primary_name))
        .listen(loopback)
        .secret(Some(secret.clone()))
        .transport(args.transport)
        .open()?;
    let source = primary.local_addr().ok_or("primary is not listening")?;
    let db = primary.open_database("land-registry", Options::new())?;
    let replicas_wanted = u32::try_from(replica_count)?;
    primary.serve(&db, layout.primary_links());
    match args.mesh {
        Some(grid) => println!(
            "{}x{} grid: primary {primary_name} listening on {source} ({:?} transport), linked to {}; every commit waits for all {replica_count} other nodes",
            grid.width,
            grid.height,
            primary.runtime(),
            layout.primary_links()
        ),
        None => println!(
            "primary listening on {source} ({:?} transport); {replica_count} replica(s), all synchronous",
            primary.runtime()
        ),
    }

    // Nodes start in order, so each one's upstreams listen before it starts.
    let mut addrs = vec![source];
    let mut nodes = Vec::new();
    let mut replicas: Vec<Replica> = Vec::new();
    for (name, upstreams) in &layout.replicas {
        let mut builder = Node::builder(name, dir.join(name))
            .secret(Some(secret.clone()))
            .transport(args.transport);
        if layout.relays {
            builder = builder.listen(loopback);
        }
        let node = builder.open()?;
        let holders: Vec<_> = upstreams.iter().map(|&i| addrs[i]).collect();
        replicas.push(node.replicate_from_any(
            &holders,
            db.uuid(),
            "land-registry",
            Options::new(),
        )?);
        addrs.push(node.local_addr().unwrap_or(source));
        nodes.push(node);
        if layout.relays {
            // A relay serves once it holds a copy: let it bootstrap before its followers ask.
            let replica = replicas.last().ok_or("no replica")?;
            let deadline = Instant::now() + Duration::from_secs(60);
            while replica.database().is_none() {
                if Instant::now() > deadline {
                    return Err(format!(
                        "{name} did not bootstrap within 60 s: {:?}",
                        replica.status()
                    )
                    .into());
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    wait_for_replicas(&db, replicas_wanted)?;

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
    let followers: Vec<ProgressBar> = layout.replicas.iter().map(|(name, _)| bar(name)).collect();
    let first_lsn = db.plumbing().received_lsn();

    // Generated before either timer starts, for the nodes and for raw heed alike: both time the
    // loading of the same records, not their making.
    let records = demo_records(args);
    // Writes from before the load (the nodes' setup, and whatever ran before the demo) may still
    // be in the page cache: on disk before the nodes' timer starts, as before raw heed's.
    sync_filesystem(&dir, "timing the nodes")?;
    let written_before = storage_bytes_written();
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let load_time = std::cell::Cell::new(Duration::ZERO);
    let applied_time = std::cell::Cell::new(Duration::ZERO);
    let outcome = std::thread::scope(|s| -> Result<(), BoxError> {
        let watcher = s.spawn(|| watch(&db, &replicas, &followers, args, &done));
        let load = load(&db, &records, args, replicas_wanted, &loaded);
        loaded.finish();
        load_time.set(started.elapsed());
        // End to end ends when every node has applied the last commit: each waits for its
        // receipt at once (a poll of the watcher's would add up to its period).
        let applied = load.and_then(|last| match last {
            Some(receipt) => wait_applied_everywhere(&db, &replicas, &receipt),
            None => Ok(()),
        });
        applied_time.set(started.elapsed());
        done.store(true, Ordering::SeqCst);
        let watched = watcher.join().map_err(|_| "watcher panicked")?;
        applied.and(watched)
    });
    outcome?;
    let elapsed = applied_time.get();
    let nodes_written = bytes_since(written_before);
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
        "every commit acknowledged by all {replica_count} replicas after {:.2} s ({:.0} records/s); primary and replicas applied everything after {:.2} s",
        load_time.get().as_secs_f64(),
        args.records as f64 / load_time.get().as_secs_f64(),
        elapsed.as_secs_f64()
    );
    println!(
        "loaded {} records in {:.2} s: {:.0} records/s end to end ({} replicas synchronous; primary: {})",
        args.records,
        elapsed.as_secs_f64(),
        args.records as f64 / elapsed.as_secs_f64(),
        replica_count,
        groups(db.stats()),
    );
    let pages = db
        .plumbing()
        .received_lsn()
        .saturating_sub(first_lsn)
        .max(1);
    let transfers: u64 = replicas.iter().map(|r| r.status().pages_received).sum();
    println!(
        "page transfers per page written: {:.2} ({transfers} transfers of {pages} pages; a tree needs {replica_count}{})",
        transfers as f64 / pages as f64,
        match args.mesh {
            Some(grid) => format!(
                ", flooding with visited lists {}",
                2 * (grid.width * (grid.height - 1) + grid.height * (grid.width - 1)) - replica_count
            ),
            None => String::new(),
        }
    );

    let mut identical = true;
    for (replica, (name, _)) in replicas.iter().zip(&layout.replicas) {
        let copy = replica.database().ok_or("replica vanished")?;
        match diff(&db, &copy)? {
            None => println!(
                "{name}: identical to the primary ({})",
                groups(copy.stats())
            ),
            Some(difference) => {
                identical = false;
                println!("{name}: DIFFERS: {difference}");
            }
        }
    }
    let group_rows = (db.stats().largest_group_records * args.batch as u64).max(1);
    // Farthest first, so no node reconnects to a neighbour that is already stopping.
    for (replica, node) in replicas.into_iter().zip(nodes).rev() {
        drop(replica);
        drop(node);
    }
    drop(db);
    drop(primary);
    // Writes of the nodes' that nobody waited for (log pages between flushes, LMDB's last meta
    // page) may still be in the page cache: on disk before raw heed's timer starts, so that its
    // loads do not pay for them.
    sync_filesystem(&dir, "timing raw heed")?;
    let heed_before = storage_bytes_written();
    let ceiling = heed_ceiling(&dir, &records, 1 + replica_count, group_rows as usize)?;
    let heed_written = bytes_since(heed_before);
    println!(
        "LMDB alone (raw heed, {} copies loaded in parallel, synced transactions of {group_rows} rows): {:.2} s, {:.0} records/s; end to end reached {:.2}x of it",
        1 + replica_count,
        ceiling.as_secs_f64(),
        args.records as f64 / ceiling.as_secs_f64(),
        ceiling.as_secs_f64() / elapsed.as_secs_f64(),
    );
    if let (Some(nodes), Some(heed)) = (nodes_written, heed_written) {
        // What bounds the time ratio where the disk's write bandwidth bounds both loads (see
        // the module docs): each node writes its pages once, to its log, which is its history.
        println!(
            "written to files: the nodes {:.1} MB (their logs included), raw heed {:.1} MB: {:.2}x of the nodes' bytes",
            nodes as f64 / 1e6,
            heed as f64 / 1e6,
            heed as f64 / nodes.max(1) as f64,
        );
    }
    if identical {
        println!("every replica is identical to the primary");
        Ok(())
    } else {
        Err("replicas differ from the primary".into())
    }
}

/// Writes back every dirty page of the filesystem holding `dir` (`syncfs`), before `what`.
fn sync_filesystem(dir: &std::path::Path, what: &str) -> Result<(), BoxError> {
    std::fs::File::open(dir)
        .and_then(|file| rustix::fs::syncfs(file).map_err(std::io::Error::from))
        .map_err(|e| format!("sync {} before {what}: {e}", dir.display()).into())
}

/// Bytes this process has caused to be written to storage so far (`write_bytes` in
/// `/proc/self/io`, counted as pages are dirtied), or `None` where the kernel does not say.
fn storage_bytes_written() -> Option<u64> {
    write_bytes_of(&std::fs::read_to_string("/proc/self/io").ok()?)
}

/// The bytes written to storage since `before` (a [`storage_bytes_written`]).
fn bytes_since(before: Option<u64>) -> Option<u64> {
    Some(storage_bytes_written()?.saturating_sub(before?))
}

/// The `write_bytes` field of a `/proc/<pid>/io` text.
fn write_bytes_of(io: &str) -> Option<u64> {
    io.lines()
        .find_map(|line| line.strip_prefix("write_bytes:"))
        .and_then(|value| value.trim().parse().ok())
}

/// The demo's land-registry-shaped records, `(key, line)`, in load order.
fn demo_records(args: &Args) -> Vec<(Vec<u8>, Vec<u8>)> {
    PricePaid::new(PricePaid::DEFAULT_SEED, args.records)
        .records()
        .map(|record| (record.key.to_vec(), record.line.into_bytes()))
        .collect()
}

/// Loads `records` with raw heed into `copies` fresh environments at once, `group_rows` rows
/// per synced transaction; returns the time the slowest took.
fn heed_ceiling(
    dir: &std::path::Path,
    records: &[(Vec<u8>, Vec<u8>)],
    copies: usize,
    group_rows: usize,
) -> Result<Duration, BoxError> {
    let scratch = tempfile::tempdir_in(dir)?;
    let started = Instant::now();
    std::thread::scope(|s| {
        let loads: Vec<_> = (0..copies)
            .map(|i| {
                let (dir, records) = (scratch.path().join(format!("heed-{i}")), records);
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

/// Waits until `wanted` distinct nodes are known to the primary (its links, and the nodes their
/// receipts report).
fn wait_for_replicas(db: &Database, wanted: u32) -> Result<(), BoxError> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let end = db.plumbing().received_lsn();
    while !db.plumbing().replication().reached(end, wanted) {
        if Instant::now() > deadline {
            return Err(format!(
                "not all {wanted} replicas connected within 60 s; the primary's links: {:?}",
                db.plumbing().replication().status()
            )
            .into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// Loads the set in batches, `inflight` commits at a time, each `Replicated(n)`; returns the
/// last commit's receipt (none for an empty set).
fn load(
    db: &Database,
    records: &[(Vec<u8>, Vec<u8>)],
    args: &Args,
    replicas: u32,
    bar: &ProgressBar,
) -> Result<Option<Receipt>, BoxError> {
    let durability = Durability::Replicated(replicas);
    let mut tickets = VecDeque::new();
    let mut batch = WriteBatch::new();
    for (key, line) in records {
        batch.put(TABLE, key, line)?;
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
    let last = tickets.back().map(|(ticket, _)| ticket.receipt());
    for (ticket, records) in tickets {
        ticket.wait()?;
        bar.inc(records as u64);
    }
    Ok(last)
}

/// Waits until the primary and every replica have applied `receipt`'s commit, each on its own
/// thread so that every applier is asked to finish at once.
fn wait_applied_everywhere(
    db: &Database,
    replicas: &[Replica],
    receipt: &Receipt,
) -> Result<(), BoxError> {
    const TIMEOUT: Duration = Duration::from_secs(600);
    std::thread::scope(|s| {
        let waits: Vec<_> = replicas
            .iter()
            .map(|replica| {
                s.spawn(move || -> Result<(), BoxError> {
                    replica.wait_for(receipt, TIMEOUT)?;
                    Ok(())
                })
            })
            .collect();
        let mut outcome: Result<(), BoxError> = db.wait_for(receipt, TIMEOUT).map_err(Into::into);
        for wait in waits {
            let waited = wait.join().map_err(|_| "a wait panicked")?;
            outcome = outcome.and(waited);
        }
        outcome
    })
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
        let primary_lsn = db.plumbing().received_lsn();
        let mut all_done = done && db.applied_lsn() >= primary_lsn;
        for (replica, bar) in replicas.iter().zip(bars) {
            let Some(copy) = replica.database() else {
                all_done = false;
                continue;
            };
            // Records applied since the replica opened, each a batch (cheap to read, unlike a count).
            let applied = (copy.stats().records * args.batch as u64).min(args.records);
            bar.set_position(applied);
            let lag = primary_lsn.saturating_sub(copy.plumbing().received_lsn());
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

#[cfg(test)]
mod tests {
    use super::write_bytes_of;

    #[test]
    fn write_bytes_is_read_from_proc_io() {
        let io = "rchar: 6976\nwchar: 12\nsyscr: 10\nsyscw: 1\nread_bytes: 4096\nwrite_bytes: 123568128\ncancelled_write_bytes: 8192\n";
        assert_eq!(write_bytes_of(io), Some(123_568_128));
        assert_eq!(write_bytes_of("rchar: 1\n"), None);
        assert_eq!(write_bytes_of("write_bytes: many\n"), None);
    }
}
