//! `proto::command::decode_request` and `decode_reply` never panic on any bytes, and what they
//! accept is canonical: encoding it again gives exactly the bytes it was decoded from. An
//! accepted request fits in a node's control limit, and DIFF's key-space helpers take any
//! range it carries (DIGEST, ENTRIES) without panicking, each table's bounds inside the range.

#![no_main]

use std::ops::Bound;

use libfuzzer_sys::fuzz_target;
use pagemesh_net::diff::{composite_key, table_ranges};
use pagemesh_net::proto::command::{
    decode_reply, decode_request, encode_reply, encode_request, request_fits, Command, KeyRange,
};

fn check_ranges(ranges: &[KeyRange]) {
    let tables: Vec<String> = ["a", "t", "bb", "sales"].map(String::from).to_vec();
    for range in ranges {
        for (table, start, end) in table_ranges(&tables, range) {
            for bound in [start, end] {
                if let Bound::Included(key) | Bound::Excluded(key) = bound {
                    let composite = composite_key(table, &key).expect("a short table name");
                    let inside = range.contains(&composite) || composite == range.hi;
                    assert!(inside, "{table} bound {key:?} outside {range:?}");
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data) {
        let mut again = Vec::new();
        encode_request(&request, &mut again);
        assert_eq!(again, data, "a request re-encodes differently: {request:?}");
        assert!(
            request_fits(&request),
            "an accepted request is over the limit"
        );
        match &request.command {
            Command::Digest { ranges, .. } => check_ranges(ranges),
            Command::Entries { range, .. } => check_ranges(std::slice::from_ref(range)),
            _ => {}
        }
    }
    if let Ok(reply) = decode_reply(data) {
        let mut again = Vec::new();
        encode_reply(&reply, &mut again);
        assert_eq!(again, data, "a reply re-encodes differently: {reply:?}");
    }
});
