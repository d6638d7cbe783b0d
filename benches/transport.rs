//! The socket transport on io_uring against the epoll fallback, measured in the same run: shipping
//! PAGES frames of 64-page (256 KiB) and 1-page runs, each frame decoded by the receiver and acked
//! through its replica link state machine (acks coalesce, as in replication), and the ack round
//! trip of one 1-page frame.
//!
//! Both ends run on loopback, each on a runtime thread of the variant's kind; the code is
//! `pagemesh_tools::bench::link`, which `pagemesh bench transport` also runs (in interleaved
//! rounds, with the ratios uring/epoll). Here criterion times a fixed number of frames or round
//! trips per sample; starting the runtimes, connecting and the RESUME are not timed. Where
//! io_uring cannot start, only epoll is measured.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pagemesh_net::transport::uring_available;
use pagemesh_net::TransportKind;
use pagemesh_tools::bench::link::{time_pings, time_ship};

fn variants() -> Vec<(TransportKind, &'static str)> {
    let mut variants = vec![(TransportKind::Epoll, "epoll")];
    if uring_available() {
        variants.push((TransportKind::Uring, "uring"));
    } else {
        eprintln!("transport: io_uring cannot start here; measuring epoll only");
    }
    variants
}

fn transport(c: &mut Criterion) {
    let variants = variants();
    for run_pages in [64usize, 1] {
        let mut group = c.benchmark_group(format!("transport/ship-{run_pages}p"));
        group.throughput(Throughput::Bytes((run_pages * 4096) as u64));
        group.sample_size(10);
        for &(kind, name) in &variants {
            group.bench_function(BenchmarkId::from_parameter(name), |b| {
                b.iter_custom(|frames| time_ship(kind, run_pages, frames).expect("ship pages"));
            });
        }
        group.finish();
    }
    let mut group = c.benchmark_group("transport/ack-ping-pong");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    for &(kind, name) in &variants {
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter_custom(|pings| time_pings(kind, pings).expect("ping-pong"));
        });
    }
    group.finish();
}

criterion_group!(benches, transport);
criterion_main!(benches);
