//! `bench transport`: the socket transport on io_uring against the epoll fallback, in one run.
//!
//! Each variant runs [`super::link::measure`]: a server and a client on two
//! runtime threads of the same kind (`uring`: the transport's own io_uring executor; `epoll`:
//! tokio's current-thread runtime), talking over loopback through the transport the service
//! uses, the server as a replica's link and the client as a source's (each side's link state
//! machine, as in replication; see that module for what is and is not measured). Per variant:
//!
//! - **Ship** MB/s for runs of 64 pages (256 KiB) and of 1 page (4 KiB): the client writes one
//!   PAGES frame of real log pages per write, as fast as the socket takes them; the server decodes
//!   every frame (crc included) and acks as a replica does, the newest ack in each write of its
//!   writer (acks coalesce); the client reads the acks on a reader task, so both directions are
//!   live. MB/s is page bytes the server decoded (10^6 bytes) over the time from the first write
//!   to the ack of the last page.
//! - **Ack round trip**, p50 and p99 in µs: one 1-page PAGES frame, wait for its ack, repeat
//!   (after 16 unrecorded warm-up round trips). Both rows of a variant carry the same figures.
//!
//! - **Floor**: the same round trip on plain blocking std sockets, no runtime and no decoding
//!   ([`super::link::blocking_floor`]), its two threads pinned to two CPUs: the loopback TCP
//!   path and two thread wake-ups across CPUs, which no transport's two ends avoid. Printed as its own row, with each variant's ack p50 over
//!   it, so a reader sees how far above this machine's floor either transport sits (and what ack
//!   round trip the sync/async estimates of `bench replicate` can hope for).
//!
//! The machine is shared and noisy, so the variants (and the floor) run interleaved in [`ROUNDS`] rounds (the
//! order alternating), each phase for `seconds / ROUNDS`, and each figure is the median of its
//! rounds. Then the ratios uring/epoll, with their targets: MB/s ≥ 1.0× and ack p50 ≤ 1.05× (issue 16's
//! restated target).
//! Where io_uring cannot start (an old kernel, a seccomp profile), only epoll is measured and a
//! note on stderr says so.

use std::error::Error;

use pagemesh_net::transport::uring_available;
use pagemesh_net::TransportKind;
use serde::Serialize;

use super::link::{
    blocking_floor, measure, FloorFigures, LinkBenchError, TransportBenchConfig, TransportFigures,
};

/// Rounds per variant; each figure is the median over them.
pub const ROUNDS: usize = 3;
/// Pages per PAGES frame in the ship phases.
pub const RUN_PAGES: [usize; 2] = [64, 1];

/// One measured cell: a variant at one run size, printed as one JSON line by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct TransportMeasurement {
    /// Always `transport`.
    pub bench: &'static str,
    /// `epoll` or `uring`.
    pub variant: &'static str,
    /// Pages per PAGES frame.
    pub run_pages: usize,
    /// Page megabytes (10^6 bytes) per second decoded by the receiver: median of the rounds.
    pub mb_per_s: f64,
    /// Ack round trip, median: median of the rounds' p50s, in µs (the same for every run size).
    pub rtt_p50_us: f64,
    /// Ack round trip, 99th percentile: median of the rounds' p99s, in µs.
    pub rtt_p99_us: f64,
    /// Rounds measured.
    pub rounds: usize,
    /// PAGES frames shipped and acked, over all rounds.
    pub frames: u64,
    /// ACK frames that acked them, over all rounds: fewer than `frames` as acks coalesce.
    pub acks: u64,
    /// Page bytes shipped and acked, over all rounds.
    pub bytes: u64,
    /// Round trips recorded, over all rounds.
    pub pings: u64,
}

/// The blocking-socket floor of the round trip, printed after the cells.
#[derive(Clone, Debug, Serialize)]
pub struct TransportFloor {
    /// Always `transport`.
    pub bench: &'static str,
    /// Always `blocking-floor`.
    pub variant: &'static str,
    /// Round trip, median of the rounds' p50s, in µs.
    pub rtt_p50_us: f64,
    /// Round trip, median of the rounds' p99s, in µs.
    pub rtt_p99_us: f64,
    /// Rounds measured.
    pub rounds: usize,
    /// Round trips recorded, over all rounds.
    pub pings: u64,
}

/// What [`measure_rounds`] found.
#[derive(Clone, Debug)]
pub struct TransportRounds {
    /// Per variant, one cell per [`RUN_PAGES`] entry.
    pub cells: Vec<TransportMeasurement>,
    /// The blocking-socket floor.
    pub floor: TransportFloor,
}

/// A ratio of one figure (uring/epoll, or a variant's ack p50 over the floor), printed after the
/// cells.
#[derive(Clone, Debug, Serialize)]
pub struct TransportRatio {
    /// Always `transport`.
    pub bench: &'static str,
    /// The figure compared: `mb_per_s@64p`, `mb_per_s@1p`, `rtt_p50_us`, `rtt_p99_us`.
    pub metric: String,
    /// `uring/epoll`, `uring/floor` or `epoll/floor`.
    pub ratio: &'static str,
    /// The first figure over the second.
    pub value: f64,
    /// What uring should reach, e.g. `>= 1.0`; empty where there is no target.
    pub target: &'static str,
    /// Whether `value` meets `target` (true where there is none).
    pub met: bool,
}

/// The variants this machine can run, in [`TransportKind`] and report name.
fn variants() -> Vec<(TransportKind, &'static str)> {
    let mut variants = vec![(TransportKind::Epoll, "epoll")];
    if uring_available() {
        variants.push((TransportKind::Uring, "uring"));
    } else {
        // On stderr, so that stdout stays one JSON object per line.
        eprintln!("transport: io_uring cannot start here; measuring epoll only");
    }
    variants
}

/// Measures every variant and the floor in [`ROUNDS`] interleaved rounds, each phase
/// `seconds / ROUNDS` per round, and returns the medians.
pub fn measure_rounds(seconds: f64) -> Result<TransportRounds, LinkBenchError> {
    let config = TransportBenchConfig {
        seconds: seconds / ROUNDS as f64,
        run_pages: RUN_PAGES.to_vec(),
        ..TransportBenchConfig::default()
    };
    let variants = variants();
    let mut rounds: Vec<Vec<TransportFigures>> = vec![Vec::new(); variants.len()];
    let mut floors: Vec<FloorFigures> = Vec::new();
    for round in 0..ROUNDS {
        for offset in 0..variants.len() {
            // Alternate which variant goes first, so drift hits them alike.
            let index = (round + offset) % variants.len();
            rounds[index].push(measure(variants[index].0, &config)?);
        }
        floors.push(blocking_floor(config.pings_max, config.seconds)?);
    }
    let mut cells = Vec::new();
    for ((_, name), figures) in variants.iter().zip(&rounds) {
        for run_pages in RUN_PAGES {
            cells.push(median_cell(name, run_pages, figures));
        }
    }
    let floor = TransportFloor {
        bench: "transport",
        variant: "blocking-floor",
        rtt_p50_us: median(floors.iter().map(|f| f.rtt_p50_us).collect()),
        rtt_p99_us: median(floors.iter().map(|f| f.rtt_p99_us).collect()),
        rounds: floors.len(),
        pings: floors.iter().map(|f| f.pings).sum(),
    };
    Ok(TransportRounds { cells, floor })
}

/// The cell of `variant` at `run_pages` from its rounds' figures.
fn median_cell(
    variant: &'static str,
    run_pages: usize,
    rounds: &[TransportFigures],
) -> TransportMeasurement {
    let ships = rounds
        .iter()
        .flat_map(|figures| figures.ships.iter().filter(|s| s.run_pages == run_pages));
    let (frames, acks, bytes) = ships.clone().fold((0, 0, 0), |(f, a, b), s| {
        (f + s.frames, a + s.acks, b + s.bytes)
    });
    TransportMeasurement {
        bench: "transport",
        variant,
        run_pages,
        mb_per_s: median(ships.map(|s| s.mb_per_s).collect()),
        rtt_p50_us: median(rounds.iter().map(|f| f.rtt_p50_us).collect()),
        rtt_p99_us: median(rounds.iter().map(|f| f.rtt_p99_us).collect()),
        rounds: rounds.len(),
        frames,
        acks,
        bytes,
        pings: rounds.iter().map(|f| f.pings).sum(),
    }
}

/// The median (the mean of the middle two for an even count); NaN if empty.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// uring/epoll for each figure, with the targets (none unless both variants were measured), then
/// each variant's ack p50 over the floor's.
pub fn ratios(cells: &[TransportMeasurement], floor: &TransportFloor) -> Vec<TransportRatio> {
    let cell = |variant: &str, run_pages: usize| {
        cells
            .iter()
            .find(|c| c.variant == variant && c.run_pages == run_pages)
    };
    let mut out = Vec::new();
    let mut ratio = |metric: String, pair: &'static str, a: f64, b: f64, target: &'static str| {
        let value = a / b;
        let met = match target {
            ">= 1.0" => value >= 1.0,
            "<= 1.05" => value <= 1.05,
            _ => true,
        };
        out.push(TransportRatio {
            bench: "transport",
            metric,
            ratio: pair,
            value,
            target,
            met,
        });
    };
    for run_pages in RUN_PAGES {
        if let (Some(uring), Some(epoll)) = (cell("uring", run_pages), cell("epoll", run_pages)) {
            let metric = format!("mb_per_s@{run_pages}p");
            let pair = "uring/epoll";
            ratio(metric, pair, uring.mb_per_s, epoll.mb_per_s, ">= 1.0");
        }
    }
    if let (Some(uring), Some(epoll)) = (cell("uring", RUN_PAGES[0]), cell("epoll", RUN_PAGES[0])) {
        let (p50, p99) = ("rtt_p50_us".to_string(), "rtt_p99_us".to_string());
        ratio(
            p50,
            "uring/epoll",
            uring.rtt_p50_us,
            epoll.rtt_p50_us,
            "<= 1.05",
        );
        ratio(p99, "uring/epoll", uring.rtt_p99_us, epoll.rtt_p99_us, "");
    }
    for (variant, pair) in [("uring", "uring/floor"), ("epoll", "epoll/floor")] {
        if let Some(cell) = cell(variant, RUN_PAGES[0]) {
            let metric = "rtt_p50_us".to_string();
            ratio(metric, pair, cell.rtt_p50_us, floor.rtt_p50_us, "");
        }
    }
    out
}

/// `pagemesh bench transport`: measures (about `6 × seconds` with both variants) and prints the
/// cells, then the ratios, as a table or as JSON lines.
pub fn run(seconds: f64, json: bool) -> Result<Vec<TransportMeasurement>, Box<dyn Error>> {
    if !(0.01..=600.0).contains(&seconds) {
        return Err("--seconds must be 0.01..=600".into());
    }
    let TransportRounds { cells, floor } = measure_rounds(seconds)?;
    super::print_rows(&cells, json, |c| {
        format!(
            "{:<10} {:<6} run_pages={:<3} MB/s={:>9.1} frames/ack={:>6.1} ack p50={:>7.1} us p99={:>7.1} us rounds={}",
            c.bench,
            c.variant,
            c.run_pages,
            c.mb_per_s,
            c.frames as f64 / c.acks as f64,
            c.rtt_p50_us,
            c.rtt_p99_us,
            c.rounds
        )
    })?;
    super::print_rows(std::slice::from_ref(&floor), json, |f| {
        format!(
            "{:<10} {:<14} (blocking std sockets, same bytes) round trip p50={:>7.1} us p99={:>7.1} us rounds={}",
            f.bench, f.variant, f.rtt_p50_us, f.rtt_p99_us, f.rounds
        )
    })?;
    super::print_rows(&ratios(&cells, &floor), json, |r| {
        let target = match r.target {
            "" => String::new(),
            target => format!(
                " (target {target}: {})",
                if r.met { "met" } else { "missed" }
            ),
        };
        format!(
            "{:<10} {:<13} {} {:.3}x{target}",
            r.bench, r.metric, r.ratio, r.value
        )
    })?;
    Ok(cells)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_yields_a_cell_per_run_size_and_the_ratios() {
        let TransportRounds { cells, floor } = measure_rounds(0.06).unwrap();
        assert!(
            floor.rtt_p99_us >= floor.rtt_p50_us && floor.pings > 0,
            "{floor:?}"
        );
        assert_eq!(floor.rounds, ROUNDS);
        let variants = if uring_available() { 2 } else { 1 };
        assert_eq!(cells.len(), variants * RUN_PAGES.len());
        for cell in &cells {
            assert!(cell.mb_per_s > 0.0 && cell.frames > 0, "{cell:?}");
            assert!((1..=cell.frames).contains(&cell.acks), "{cell:?}");
            assert_eq!(cell.bytes, cell.frames * (cell.run_pages * 4096) as u64);
            assert!(
                cell.rtt_p99_us >= cell.rtt_p50_us && cell.pings > 0,
                "{cell:?}"
            );
            assert_eq!(cell.rounds, ROUNDS);
        }
        let ratios = ratios(&cells, &floor);
        assert_eq!(ratios.len(), if variants == 2 { 6 } else { 1 });
        let over_floor = ratios.iter().filter(|r| r.ratio.ends_with("/floor"));
        assert_eq!(over_floor.count(), variants);
    }

    #[test]
    fn median_takes_the_middle() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(Vec::new()).is_nan());
    }
}
