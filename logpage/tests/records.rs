//! Random records through a real ring, reassembled byte for byte.
//!
//! proptest draws record sizes from 1 byte to 64 KB (spanning up to 17 pages), with seals at random
//! points, on a ring small enough (64 pages) that the records wrap it many times; the cursor
//! drains and releases as it goes. What comes out must equal what went in, in order.

mod common;

use common::drain;
use pagemesh_logpage::{Log, LogOptions, RecordReader};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append { len: usize, fill: u8 },
    Seal,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..=300, any::<u8>()).prop_map(|(len, fill)| Op::Append { len, fill }),
        3 => (1usize..=65_536, any::<u8>()).prop_map(|(len, fill)| Op::Append { len, fill }),
        1 => Just(Op::Seal),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn records_come_out_as_they_went_in(ops in proptest::collection::vec(op(), 1..80)) {
        let log = Log::in_memory(LogOptions::new().slots(64)).unwrap();
        let mut cursor = log.cursor(0).unwrap();
        let mut reader = RecordReader::new();
        let (mut expected, mut got) = (Vec::new(), Vec::new());
        for op in ops {
            match op {
                Op::Append { len, fill } => {
                    // Distinct content per record: the fill byte, then the record's index.
                    let mut record = vec![fill; len];
                    let index = (expected.len() as u32).to_le_bytes();
                    let n = index.len().min(len);
                    record[..n].copy_from_slice(&index[..n]);
                    // Keep the ring from filling on this single thread: drain before a big one.
                    log.seal();
                    drain(&mut cursor, &mut reader, &mut got);
                    log.append(&record).unwrap();
                    expected.push(record);
                }
                Op::Seal => {
                    log.seal();
                }
            }
        }
        log.seal();
        drain(&mut cursor, &mut reader, &mut got);
        let got: Vec<Vec<u8>> = got.into_iter().map(|(_, bytes)| bytes).collect();
        prop_assert_eq!(got.len(), expected.len());
        prop_assert!(got == expected, "records differ");
    }
}
