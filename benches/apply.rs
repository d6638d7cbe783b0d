//! Applying a backlog of the demo's records as one LMDB group (`pagemesh_tools::bench::apply`):
//! pagemesh's applier against raw heed putting the same records in one synced transaction, in
//! log order (`heed-txn`, the baseline) and sorted by key (`heed-txn-sorted`, the ceiling for an
//! applier that sorts, as pagemesh's does). Each into a database that already holds as many
//! records again.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pagemesh_tools::bench::apply::{time_apply_backlog, time_heed_backlog};
use pagemesh_tools::bench::commit::records;

const RECORDS: usize = 60_000;

fn apply(c: &mut Criterion) {
    let records = records(RECORDS);
    let mut group = c.benchmark_group("apply/price_paid");
    group.throughput(Throughput::Elements((RECORDS / 2) as u64));
    group.sample_size(10);
    group.bench_function("pagemesh-backlog", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    let dir = tempfile::tempdir().expect("temp dir");
                    time_apply_backlog(dir.path(), &records).expect("apply the backlog")
                })
                .sum()
        });
    });
    for (name, sorted) in [("heed-txn", false), ("heed-txn-sorted", true)] {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| {
                        let dir = tempfile::tempdir().expect("temp dir");
                        time_heed_backlog(dir.path(), &records, sorted).expect("heed txn")
                    })
                    .sum()
            });
        });
    }
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
