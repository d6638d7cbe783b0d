//! `pagemesh`: the command-line program.
//!
//! - `pagemesh demo`: a primary and two synchronous replicas on loopback, a load, a DIFF.
//! - `pagemesh node --config node.toml`: a long-lived node (`--check-config FILE` validates one).
//! - `pagemesh ctl --node ADDR status|lookup|promote`: ask a running node (its command channel).
//! - `pagemesh backup|restore|stat`: snapshots to files and back; what a database holds.
//! - `pagemesh bench reserve|commit|replicate|transport|bootstrap|mesh`: pagemesh against baselines, as ratios.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod backup;
mod ctl;
mod demo;
mod import;
mod metrics;
mod run_node;
mod stat;

#[derive(Parser)]
#[command(
    name = "pagemesh",
    version,
    about = "Embedded replicated storage engine"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a primary and two synchronous replicas on loopback, load the land-registry set, and
    /// verify every replica is identical to the primary.
    Demo(demo::Args),
    /// Run a long-lived node from a TOML configuration.
    Node(run_node::Args),
    /// Import a CSV file into a table, one row per key; bad rows are reported with line numbers.
    Import(import::ImportArgs),
    /// Write a full, consistent snapshot of a database to a file.
    Backup(backup::BackupArgs),
    /// Restore a snapshot file into an empty directory.
    Restore(backup::RestoreArgs),
    /// Show a database's identity, log positions, cursors, tables and sizes (also while a node
    /// or app writes it).
    Stat(stat::StatArgs),
    /// Ask a running node over its command channel: status (or --watch), lookup, promote, diff.
    Ctl(ctl::CtlArgs),
    /// Write the project's land-registry-shaped data set as CSV.
    Generate(import::GenerateArgs),
    /// Measure pagemesh against baselines in the same run; reports ratios.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// Page transfers per page and delay to the last node when routing over a mesh (the
    /// simulator, the service's routing), against flooding on the same graphs and seeds.
    Mesh {
        /// Seeds per graph.
        #[arg(long, default_value_t = 5)]
        seeds: u64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Seeding a new replica from a full snapshot over loopback, against a local export+restore.
    Bootstrap {
        /// MiB of table data in the source database.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Socket event loop: auto, uring or epoll.
        #[arg(long, default_value = "auto")]
        transport: pagemesh::net::TransportKind,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Page-run shipping MB/s and ack round trips: the io_uring transport against epoll.
    Transport {
        /// Seconds per phase and kind (split into three interleaved rounds).
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Commits per second and latency with a replica: none, async, sync, sync-durable.
    Replicate {
        /// Commits in flight to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        inflight: Vec<usize>,
        /// Seconds per cell and round.
        #[arg(long, default_value_t = 1.0)]
        seconds: f64,
        /// Interleaved rounds; each cell reports its median round.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Variants to measure, comma-separated (to profile one cell alone).
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "none,async,sync,sync-durable,durable,durable-neighbour,sync-durable-apart"
        )]
        variants: Vec<String>,
        /// Socket event loop: auto, uring or epoll.
        #[arg(long, default_value = "auto")]
        transport: pagemesh::net::TransportKind,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Commits per second through the store against raw heed: applied, durable, batch.
    Commit {
        /// Commits in flight to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,16,256")]
        inflight: Vec<usize>,
        /// Seconds per cell.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Records appended per second: anchor vs mutex vs fetch_add, mixed and 100-byte records.
    Reserve {
        /// Thread counts to measure, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,2")]
        threads: Vec<usize>,
        /// Seconds per variant per cell (split into interleaved rounds).
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // A node sets up its own log (level and format from its configuration: run_node.rs).
    if !matches!(cli.command, Command::Node(_)) {
        tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_writer(std::io::stderr)
            .init();
    }
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args).map_err(|e| e as Box<dyn std::error::Error>),
        Command::Import(args) => import::import(&args),
        Command::Node(args) => run_node::run(&args),
        Command::Bench {
            bench:
                Bench::Bootstrap {
                    mib,
                    transport,
                    json,
                },
        } => bench_bootstrap(mib, transport, json),
        Command::Bench {
            bench: Bench::Transport { seconds, json },
        } => pagemesh_tools::bench::transport::run(seconds, json).map(|_| ()),
        Command::Bench {
            bench: Bench::Mesh { seeds, json },
        } => bench_mesh(seeds, json),
        Command::Bench {
            bench:
                Bench::Replicate {
                    inflight,
                    seconds,
                    rounds,
                    variants,
                    transport,
                    json,
                },
        } => bench_replicate(&inflight, seconds, rounds, &variants, transport, json),
        Command::Backup(args) => backup::backup(&args),
        Command::Restore(args) => backup::restore(&args),
        Command::Stat(args) => stat::stat(&args),
        Command::Ctl(args) => return ctl::run(&args),
        Command::Generate(args) => import::generate(&args),
        Command::Bench {
            bench:
                Bench::Reserve {
                    threads,
                    seconds,
                    json,
                },
        } => bench_reserve(&threads, seconds, json),
        Command::Bench {
            bench:
                Bench::Commit {
                    inflight,
                    seconds,
                    json,
                },
        } => bench_commit(&inflight, seconds, json),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("pagemesh: {error}");
            ExitCode::FAILURE
        }
    }
}

fn bench_reserve(
    threads: &[usize],
    seconds: f64,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    use pagemesh_tools::bench::reserve::{measure, ratios, Workload};
    if threads.iter().any(|&t| t == 0 || t > 64) || !(0.01..=600.0).contains(&seconds) {
        return Err("--threads must be 1..=64 and --seconds 0.01..=600".into());
    }
    let mut all_ratios = Vec::new();
    for workload in Workload::ALL {
        for &t in threads {
            let cell = measure(workload, t, seconds);
            pagemesh_tools::bench::print_rows(&cell, json, |m| {
                format!(
                    "{:<16} {:<10} threads={} record_bytes={:>7.1} ops/s={:>12.0} MB/s={:>8.1}",
                    m.workload, m.variant, m.threads, m.record_bytes, m.ops_per_sec, m.mb_per_sec
                )
            })?;
            all_ratios.extend(ratios(&cell));
        }
    }
    pagemesh_tools::bench::print_rows(&all_ratios, json, |r| {
        format!(
            "{:<16} threads={} {:<16} {:.2}x",
            r.workload, r.threads, r.ratio, r.value
        )
    })?;
    Ok(())
}

fn bench_commit(
    inflight: &[usize],
    seconds: f64,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    use pagemesh_tools::bench::commit::{measure_all, ratios};
    if inflight.iter().any(|&n| n == 0 || n > 65_536) || !(0.01..=600.0).contains(&seconds) {
        return Err("--inflight must be 1..=65536 and --seconds 0.01..=600".into());
    }
    let cells = measure_all(inflight, seconds)?;
    pagemesh_tools::bench::print_rows(&cells, json, |c| {
        let p50 = c
            .p50_us
            .map_or(String::new(), |us| format!(" p50={us:.0}us"));
        let window = c
            .window
            .as_ref()
            .map_or(String::new(), |w| format!(" [{w}]"));
        format!(
            "{:<18} {:<16} inflight={:<4} ops/s={:>10.0} records/txn={:>8.1}{p50}{window}",
            c.workload, c.variant, c.inflight, c.ops_per_sec, c.records_per_txn
        )
    })?;
    pagemesh_tools::bench::print_rows(&ratios(&cells), json, |r| {
        format!("{:<18} {:<34} {:.2}x", r.workload, r.ratio, r.value)
    })?;
    Ok(())
}

fn bench_replicate(
    inflight: &[usize],
    seconds: f64,
    rounds: usize,
    variants: &[String],
    transport: pagemesh::net::TransportKind,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    use pagemesh_tools::bench::replicate::{
        ack_round_trip_us, loopback_floor_us, measure_all, ratios, RoundTrips, VARIANTS,
    };
    if inflight.iter().any(|&n| n == 0 || n > 65_536) || !(0.01..=600.0).contains(&seconds) {
        return Err("--inflight must be 1..=65536 and --seconds 0.01..=600".into());
    }
    if let Some(unknown) = variants.iter().find(|v| !VARIANTS.contains(&v.as_str())) {
        return Err(format!(
            "unknown variant {unknown}: choose from {}",
            VARIANTS.join(", ")
        )
        .into());
    }
    let variants: Vec<&str> = variants.iter().map(String::as_str).collect();
    let cells =
        measure_all(inflight, &variants, seconds, rounds, transport).map_err(|e| e.to_string())?;
    pagemesh_tools::bench::print_rows(&cells, json, |c| {
        format!(
            "{:<22} {:<13} inflight={:<4} commits/s={:>9.0} p50={:>8.0}us p99={:>8.0}us records/page={:>5.1} ({})",
            c.workload,
            c.variant,
            c.inflight,
            c.ops_per_sec,
            c.p50_us,
            c.p99_us,
            c.records_per_page,
            c.transport
        )
    })?;
    // The round trip each sync/async ratio is set against, when there is such a ratio.
    let round_trips = if variants.contains(&"sync") && variants.contains(&"async") {
        Some(RoundTrips {
            ack_us: ack_round_trip_us(transport).map_err(|e| e.to_string())?,
            floor_us: loopback_floor_us().map_err(|e| e.to_string())?,
        })
    } else {
        None
    };
    pagemesh_tools::bench::print_rows(&ratios(&cells, round_trips), json, |r| {
        format!("{:<22} {:<46} {:.2}", r.workload, r.ratio, r.value)
    })?;
    Ok(())
}

fn bench_mesh(seeds: u64, json: bool) -> Result<(), Box<dyn std::error::Error>> {
    use pagemesh_tools::bench::mesh::{graphs, measure};
    if !(1..=1_000).contains(&seeds) {
        return Err("--seeds must be 1..=1000".into());
    }
    if !json {
        println!(
            "{:<11} {:>5} {:>6} {:>10} {:>9} {:>7} {:>10} {:>10} {:>10} {:>8} {:>13} {:>9} {:>7}",
            "graph",
            "nodes",
            "links",
            "tree/page",
            "flooding",
            "/(N-1)",
            "tree p50",
            "tree p99",
            "flood last",
            "stretch",
            "p50 no-speed",
            "stretch0",
            "moves"
        );
    }
    let mut broken = 0;
    for (graph, topology) in graphs() {
        let row = measure(&graph, topology, seeds);
        broken += row.violations;
        pagemesh_tools::bench::print_rows(std::slice::from_ref(&row), json, |r| {
            format!(
                "{:<11} {:>5} {:>6.0} {:>10.2} {:>9.0} {:>7.3} {:>8.1}ms {:>8.1}ms {:>8.1}ms {:>8.3} {:>11.1}ms {:>9.3} {:>7.1}",
                r.graph,
                r.nodes,
                r.links,
                r.tree_transfers_per_page,
                r.flooding_transfers_per_page,
                r.tree_over_n_minus_1,
                r.tree_last_node_p50_ms,
                r.tree_last_node_p99_ms,
                r.flooding_last_node_ms,
                r.stretch,
                r.last_node_p50_without_speed_grafts_ms,
                r.stretch_without_speed_grafts,
                r.speed_grafts_per_seed
            )
        })?;
    }
    if broken > 0 {
        return Err(format!("the simulator found {broken} broken invariants").into());
    }
    Ok(())
}

fn bench_bootstrap(
    mib: u64,
    transport: pagemesh::net::TransportKind,
    json: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    if !(1..=65_536).contains(&mib) {
        return Err("--mib must be 1..=65536".into());
    }
    let cells =
        pagemesh_tools::bench::bootstrap::measure(mib, transport).map_err(|e| e.to_string())?;
    pagemesh_tools::bench::print_rows(&cells, json, |c| {
        format!(
            "{:<10} {:<11} bytes={:>12} seconds={:>7.2} MB/s={:>8.1}",
            c.workload, c.variant, c.bytes, c.seconds, c.mb_per_sec
        )
    })?;
    if let [local, network] = &cells[..] {
        println!(
            "bootstrap  network/local-copy {:.2}x (target: network >= 200 MB/s)",
            network.mb_per_sec / local.mb_per_sec
        );
    }
    Ok(())
}
