//! Durable commits per second: pagemesh (16 in flight from one thread, group commit) against raw
//! heed doing the same puts with one synced LMDB transaction each, in the same run.
//!
//! The workload is `pagemesh_tools::bench::commit`, which `pagemesh bench commit` also runs (with all
//! the variants and the ratios).

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pagemesh_core::Durability;
use pagemesh_tools::bench::commit::{records, time_heed_sync, time_pagemesh};

fn commit(c: &mut Criterion) {
    let records = records(10_000);
    let mut group = c.benchmark_group("commit/price_paid");
    group.throughput(Throughput::Elements(1));
    group.sample_size(10);
    group.bench_function("durable-16-inflight", |b| {
        b.iter_custom(|iters| {
            let dir = tempfile::tempdir().expect("temp dir");
            time_pagemesh(dir.path(), &records, Durability::Durable, 16, iters)
                .expect("pagemesh commits")
        });
    });
    group.bench_function("heed-sync-txn", |b| {
        b.iter_custom(|iters| {
            let dir = tempfile::tempdir().expect("temp dir");
            time_heed_sync(dir.path(), &records, iters).expect("heed commits")
        });
    });
    group.finish();
}

criterion_group!(benches, commit);
criterion_main!(benches);
