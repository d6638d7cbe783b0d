//! `pagemesh`: the command-line program.
//!
//! - `pagemesh demo`: the log at work: writers, followers, a crash-free reopen, a verification.
//! - `pagemesh bench reserve`: reservations per second, the anchor against its baselines.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod demo;

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
    /// Run the log with concurrent writers and two followers, and verify what they read.
    Demo(demo::Args),
    /// Measure pagemesh against baselines in the same run; reports ratios.
    Bench {
        #[command(subcommand)]
        bench: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Demo(args) => demo::run(&args).map_err(|e| e as Box<dyn std::error::Error>),
        Command::Bench {
            bench:
                Bench::Reserve {
                    threads,
                    seconds,
                    json,
                },
        } => bench_reserve(&threads, seconds, json),
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
    use pagemesh::bench::reserve::{measure, ratios, Workload};
    if threads.iter().any(|&t| t == 0 || t > 64) || !(0.01..=600.0).contains(&seconds) {
        return Err("--threads must be 1..=64 and --seconds 0.01..=600".into());
    }
    let mut all_ratios = Vec::new();
    for workload in Workload::ALL {
        for &t in threads {
            let cell = measure(workload, t, seconds);
            for m in &cell {
                if json {
                    println!("{}", serde_json::to_string(m)?);
                } else {
                    println!(
                        "{:<16} {:<10} threads={} record_bytes={:>7.1} ops/s={:>12.0} MB/s={:>8.1}",
                        m.workload,
                        m.variant,
                        m.threads,
                        m.record_bytes,
                        m.ops_per_sec,
                        m.mb_per_sec
                    );
                }
            }
            all_ratios.extend(ratios(&cell));
        }
    }
    for r in &all_ratios {
        if json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            println!(
                "{:<16} threads={} {:<16} {:.2}x",
                r.workload, r.threads, r.ratio, r.value
            );
        }
    }
    Ok(())
}
