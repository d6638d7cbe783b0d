//! Benchmarks shared by `pagemesh bench` and `benches/`: each measures pagemesh against a baseline
//! in the same run, and reports ratios, because the machines are shared and noisy.

pub mod apply;
pub mod bootstrap;
pub mod commit;
pub mod link;
pub mod mesh;
pub mod replicate;
pub mod reserve;
pub mod transport;

use serde::Serialize;

/// One measured cell, printed as one JSON line by `pagemesh bench … --json`.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    /// Benchmark and workload, e.g. `reserve/mixed`.
    pub workload: String,
    /// What was measured: pagemesh's path or a baseline.
    pub variant: String,
    /// Threads appending.
    pub threads: usize,
    /// Mean record size in bytes.
    pub record_bytes: f64,
    /// Operations completed per second.
    pub ops_per_sec: f64,
    /// Payload megabytes per second.
    pub mb_per_sec: f64,
}

/// A ratio of two measured variants, printed after the cells.
#[derive(Clone, Debug, Serialize)]
pub struct Ratio {
    /// Benchmark and workload.
    pub workload: String,
    /// Threads.
    pub threads: usize,
    /// `numerator/denominator`, e.g. `anchor/mutex`.
    pub ratio: String,
    /// The ratio of their `ops_per_sec`.
    pub value: f64,
}

/// Prints `rows` one per line: as JSON objects with `json`, else as `table` formats them. Every
/// `pagemesh bench` command prints its cells and ratios this way.
pub fn print_rows<T: Serialize>(
    rows: &[T],
    json: bool,
    table: impl Fn(&T) -> String,
) -> serde_json::Result<()> {
    for row in rows {
        if json {
            println!("{}", serde_json::to_string(row)?);
        } else {
            println!("{}", table(row));
        }
    }
    Ok(())
}
