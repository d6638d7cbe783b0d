//! `proto::command::decode_request` and `decode_reply` never panic on any bytes, and what they
//! accept is canonical: encoding it again gives exactly the bytes it was decoded from.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pagemesh_net::proto::command::{decode_reply, decode_request, encode_reply, encode_request};

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = decode_request(data) {
        let mut again = Vec::new();
        encode_request(&request, &mut again);
        assert_eq!(again, data, "a request re-encodes differently: {request:?}");
    }
    if let Ok(reply) = decode_reply(data) {
        let mut again = Vec::new();
        encode_reply(&reply, &mut again);
        assert_eq!(again, data, "a reply re-encodes differently: {reply:?}");
    }
});
