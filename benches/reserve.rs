//! Reservations per second: the log's anchor against a Mutex-guarded log (the design it replaces)
//! and a fetch_add counter (the contention floor), measured in the same run.
//!
//! Workloads and variants are `pagemesh_tools::bench::reserve`, the same code `pagemesh bench reserve`
//! runs; that command prints the ratios. Here criterion times a fixed number of appends per thread.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pagemesh_tools::bench::reserve::{time_fixed, Variant, Workload};

fn reserve(c: &mut Criterion) {
    for workload in Workload::ALL {
        for threads in [1usize, 2] {
            let mut group = c.benchmark_group(format!("reserve/{}/{threads}t", workload.name()));
            group.throughput(Throughput::Elements(threads as u64));
            group.sample_size(20);
            for variant in Variant::ALL {
                group.bench_function(BenchmarkId::from_parameter(variant.name()), |b| {
                    b.iter_custom(|iters| time_fixed(variant, workload, threads, iters));
                });
            }
            group.finish();
        }
    }
}

criterion_group!(benches, reserve);
criterion_main!(benches);
