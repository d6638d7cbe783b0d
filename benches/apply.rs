//! Applying a backlog of the demo's records as one LMDB group (`pagemesh_tools::bench::apply`):
//! pagemesh's applier against raw heed putting the same records in one synced transaction, in
//! log order (`heed-txn`, the baseline) and sorted by key (`heed-txn-sorted`, the ceiling for an
//! applier that sorts, as pagemesh's does). Each into a database that already holds as many
//! records again. `pagemesh-backlog-barriers` applies the same puts in records that are
//! barriers (each also creates its existing table), which the applier applies whole, in log
//! order: against `heed-txn`, what that path costs.

use std::path::Path;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pagemesh_tools::bench::apply::{time_apply_backlog, time_heed_backlog, BacklogShape};
use pagemesh_tools::bench::commit::records;

const RECORDS: usize = 60_000;

fn apply(c: &mut Criterion) {
    let records = records(RECORDS);
    let mut group = c.benchmark_group("apply/price_paid");
    group.throughput(Throughput::Elements((RECORDS / 2) as u64));
    group.sample_size(10);
    // Each iteration in a fresh directory; only what `time` times counts.
    let mut bench = |name: &str, time: &dyn Fn(&Path) -> Duration| {
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                (0..iters)
                    .map(|_| time(tempfile::tempdir().expect("temp dir").path()))
                    .sum()
            });
        });
    };
    for (name, shape) in [
        ("pagemesh-backlog", BacklogShape::Puts),
        ("pagemesh-backlog-barriers", BacklogShape::Barriers),
    ] {
        bench(name, &|dir| {
            time_apply_backlog(dir, &records, shape).expect("apply the backlog")
        });
    }
    for (name, sorted) in [("heed-txn", false), ("heed-txn-sorted", true)] {
        bench(name, &|dir| {
            time_heed_backlog(dir, &records, sorted).expect("heed txn")
        });
    }
    group.finish();
}

criterion_group!(benches, apply);
criterion_main!(benches);
