//! Commits per second with one replica: synchronous (`Replicated(1)`, the commit returns once the
//! replica received its page) against asynchronous (the replica follows; commits wait for the
//! local log only), 16 commits in flight from one thread, in the same run.
//!
//! The workload is `pagemesh_tools::bench::replicate`, which `pagemesh bench replicate` also runs (all
//! variants, 1/16/256 in flight, latencies and ratios).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pagemesh::net::TransportKind;
use pagemesh_tools::bench::commit::records;
use pagemesh_tools::bench::replicate::Pair;

fn replicate(c: &mut Criterion) {
    let records = records(10_000);
    let mut group = c.benchmark_group("replicate/price_paid");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    for variant in ["async", "sync"] {
        let pair = Pair::start(variant, TransportKind::Auto).expect("nodes start");
        group.bench_function(format!("{variant}-16-inflight"), |b| {
            b.iter_custom(|iters| pair.time(&records, 16, iters).expect("commits"));
        });
    }
    group.finish();
}

criterion_group!(benches, replicate);
criterion_main!(benches);
