//! The store's record decoder (`pagemesh_core::record::decode`) on arbitrary bytes: it must never
//! panic, and a record it accepts must re-encode to the same bytes (so the format has one encoding
//! and the decoder checks everything the encoder guarantees).

#![no_main]

use libfuzzer_sys::fuzz_target;
use pagemesh_core::record::{decode, Op, RecordBuilder};

fuzz_target!(|bytes: &[u8]| {
    let Ok(view) = decode(bytes) else { return };
    let mut builder = RecordBuilder::default();
    for op in view.ops() {
        let added = match *op {
            Op::Put { table, key, value } => builder.put(table, key, value),
            Op::Delete { table, key } => builder.delete(table, key),
            Op::CreateTable { table } => builder.create_table(table),
            Op::DropTable { table } => builder.drop_table(table),
            Op::ClearTable { table } => builder.clear_table(table),
        };
        added.expect("a decoded op is one the builder accepts");
    }
    for read in view.reads() {
        builder
            .read(read.table, read.key, read.version)
            .expect("a decoded read is valid");
    }
    for range in view.range_reads() {
        builder
            .read_range(
                range.table,
                range.start,
                range.end,
                range.count,
                range.max_version,
            )
            .expect("a decoded range read is valid");
    }
    let kind_is_transaction = bytes.get(1) == Some(&1);
    let read_something = !view.reads().is_empty() || !view.range_reads().is_empty();
    if kind_is_transaction == read_something {
        assert_eq!(
            builder.encode(view.hlc),
            bytes,
            "decode then encode changed the record"
        );
    }
    std::hint::black_box(view);
});
