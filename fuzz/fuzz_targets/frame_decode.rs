//! `proto::decode` never panics on any bytes, and what it accepts is canonical.
//!
//! The input is read as a stream of frames: decode, step past the frame, repeat until
//! `Incomplete` or an error (at most 64 frames). Random bytes almost never carry a right crc32c,
//! so each input is tried twice: as it comes, and with every frame's crc re-sealed over the bytes
//! its header announces, so the body checks behind the crc get fuzzed too.
//!
//! For every frame decoded: it took between a header and the whole buffer; encoding it again
//! gives exactly the bytes it was decoded from; those decode to an equal frame. `Incomplete` asks
//! for more bytes than the buffer holds. A header that passes a reader's check (`check_header`)
//! before the peer authenticates is a handshake type announcing at most `HANDSHAKE_BODY_MAX`
//! bytes; on a control link, it announces at most `CONTROL_BODY_MAX` bytes.

#![no_main]

use std::hint::black_box;

use libfuzzer_sys::fuzz_target;
use pagemesh_net::proto::{
    check_header, decode, encode, Accept, Decoded, FrameType, CONTROL_BODY_MAX, FRAME_BODY_MAX,
    FRAME_HEADER_LEN, HANDSHAKE_BODY_MAX,
};
use reseal::reseal;

#[path = "shared/reseal.rs"]
mod reseal;

/// Frames decoded per input at most.
const FRAMES_MAX: usize = 64;

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut sealed = data.to_vec();
    reseal(&mut sealed);
    check(&sealed);
});

fn check(data: &[u8]) {
    check_before_authentication(data);
    let mut rest = data;
    for _ in 0..FRAMES_MAX {
        match decode(rest) {
            Ok(Decoded::Frame { frame, len }) => {
                assert!((FRAME_HEADER_LEN..=rest.len()).contains(&len));
                let (bytes, tail) = rest.split_at(len);
                let mut again = Vec::new();
                encode(&frame, &mut again);
                assert_eq!(again, bytes, "{} re-encodes differently", frame.kind());
                match decode(&again) {
                    Ok(Decoded::Frame {
                        frame: back,
                        len: back_len,
                    }) => {
                        assert_eq!(back, frame);
                        assert_eq!(back_len, len);
                    }
                    other => panic!("re-encoded {} does not decode: {other:?}", frame.kind()),
                }
                black_box(&frame);
                rest = tail;
            }
            Ok(Decoded::Incomplete { needed }) => {
                assert!(needed > rest.len());
                assert!((FRAME_HEADER_LEN..=FRAME_HEADER_LEN + FRAME_BODY_MAX).contains(&needed));
                break;
            }
            Err(error) => {
                black_box(error.to_string());
                break;
            }
        }
    }
}

fn check_before_authentication(data: &[u8]) {
    for accept in [Accept::Handshake, Accept::Control, Accept::Bulk] {
        match check_header(data, accept) {
            Ok(()) => {
                let frame_type = FrameType::from_u8(data[4]).expect("a known type passed");
                let body_len = u32::from_le_bytes([data[0], data[1], data[2], data[3]]) as usize;
                assert!(body_len <= frame_type.body_max());
                match accept {
                    Accept::Handshake => {
                        assert!(frame_type.is_handshake(), "{} passed", frame_type.name());
                        assert!(
                            body_len <= HANDSHAKE_BODY_MAX,
                            "{body_len}-byte body passed"
                        );
                    }
                    Accept::Control => assert!(body_len <= CONTROL_BODY_MAX),
                    Accept::Bulk => {}
                }
            }
            Err(error) => {
                black_box(error.to_string());
            }
        }
    }
}
