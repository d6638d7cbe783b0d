//! `pagemesh-sim`: runs the deterministic cluster simulator over many seeds and prints each
//! failing seed with the command that replays it.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use clap::Parser;
use pagemesh_sim::{run_with, Outcome, Scenario};

/// Runs pagemesh's deterministic cluster simulator.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// How many seeds to run, from --first on.
    #[arg(long, default_value_t = 1_000)]
    seeds: u64,
    /// The first seed.
    #[arg(long, default_value_t = 0)]
    first: u64,
    /// Run this one seed only (and print its scenario and counts).
    #[arg(long, conflicts_with_all = ["seeds", "first"])]
    seed: Option<u64>,
    /// Replicas per run (default: drawn from each seed, 1 to 4).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=16))]
    replicas: Option<u64>,
    /// With --seed: print every event.
    #[arg(long, requires = "seed")]
    verbose: bool,
    /// Threads running seeds (default: the machine's cores).
    #[arg(long)]
    threads: Option<usize>,
}

fn scenario(seed: u64, replicas: Option<u64>) -> Scenario {
    let scenario = Scenario::from_seed(seed);
    match replicas {
        Some(replicas) => scenario.with_replicas(replicas as usize),
        None => scenario,
    }
}

fn replay(seed: u64, replicas: Option<u64>) -> String {
    let mut command = format!("cargo run --release -p pagemesh-sim -- --seed {seed}");
    if let Some(replicas) = replicas {
        command += &format!(" --replicas {replicas}");
    }
    command
}

fn report_failure(outcome: &Outcome, replicas: Option<u64>) {
    println!("seed {} FAILED", outcome.seed);
    for violation in &outcome.violations {
        println!("  {violation}");
    }
    println!("  replay: {}", replay(outcome.seed, replicas));
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(seed) = args.seed {
        let scenario = scenario(seed, args.replicas);
        println!("{scenario:#?}");
        let outcome = run_with(scenario, args.verbose);
        for line in &outcome.trace {
            println!("{line}");
        }
        println!("{:#?}", outcome.stats);
        println!("trace hash {:016x}", outcome.trace_hash);
        if outcome.violations.is_empty() {
            println!("seed {seed} passed");
            return ExitCode::SUCCESS;
        }
        report_failure(&outcome, args.replicas);
        return ExitCode::FAILURE;
    }
    let started = Instant::now();
    let threads = args
        .threads
        .or_else(|| std::thread::available_parallelism().ok().map(Into::into))
        .unwrap_or(1)
        .max(1);
    let next = AtomicU64::new(args.first);
    let end = args.first.saturating_add(args.seeds);
    let failures = Mutex::new(Vec::new());
    let ran = AtomicU64::new(0);
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::Relaxed);
                if seed >= end {
                    break;
                }
                let outcome = run_with(scenario(seed, args.replicas), false);
                ran.fetch_add(1, Ordering::Relaxed);
                if !outcome.violations.is_empty() {
                    report_failure(&outcome, args.replicas);
                    failures
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .push(outcome.seed);
                }
            });
        }
    });
    let mut failures = failures
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    failures.sort_unstable();
    println!(
        "{} seeds ({}..{end}) in {:.1?}: {} failed{}",
        ran.load(Ordering::Relaxed),
        args.first,
        started.elapsed(),
        failures.len(),
        if failures.is_empty() {
            String::new()
        } else {
            format!(" {failures:?}")
        }
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
