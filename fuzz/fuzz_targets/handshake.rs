//! `proto::Handshake` never panics on any frame in any state, and keeps its promises.
//!
//! Input: one mode byte, then bytes decoded as a stream of frames (crc re-sealed, as in
//! `frame_decode`, so their bodies decode; at most 32 frames). The mode picks each side's secret
//! (none, empty, "k1", "k2"), whether both sides claim the same node uuid, and how many honest
//! steps (HELLO to the acceptor, WELCOME to the connector, AUTH to the acceptor) run before the
//! fuzzed frames, so every state is reached. Each fuzzed frame goes to both the connector and the
//! acceptor.
//!
//! After every step: what was sent decodes as at most one frame; an error sends nothing or one
//! REFUSE; a success sends nothing, a WELCOME (acceptor) or an AUTH (connector); a failed
//! handshake stays failed and silent; an established one stays established and sends nothing;
//! an established peer is not ourselves and speaks a version in our range.

#![no_main]

use std::hint::black_box;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use pagemesh_net::proto::{decode, Decoded, Frame, FrameType, Handshake, HandshakeConfig, Uuid};
use reseal::reseal;

/// Fuzzed frames fed per input at most.
const FRAMES_MAX: usize = 32;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut bytes = rest.to_vec();
    reseal(&mut bytes);
    let frames = decode_all(&bytes);

    let now = Instant::now();
    let acceptor_node = if mode & 0x10 != 0 { 1 } else { 2 };
    let connector = config(1, 2..=3, secret(mode));
    let acceptor = config(acceptor_node, 1..=2, secret(mode >> 2));
    let mut hello = Vec::new();
    let c = Handshake::connect(&connector, [0xC1; 32], now, &mut hello);
    let mut c = Side::new(c, &connector, false);
    let mut a = Side::new(
        Handshake::accept(&acceptor, [0xA2; 32], now),
        &acceptor,
        true,
    );

    let honest_steps = mode >> 5;
    if honest_steps >= 1 {
        let welcome = a.feed(&hello);
        if honest_steps >= 2 {
            let auth = c.feed(&welcome);
            if honest_steps >= 3 {
                a.feed(&auth);
            }
        }
    }
    for frame in &frames {
        c.step(frame);
        a.step(frame);
    }
    black_box(
        c.handshake
            .check_deadline(now + Duration::from_secs(1))
            .is_ok(),
    );
    black_box(format!("{:?} {:?}", c.handshake, a.handshake));
});

fn secret(bits: u8) -> Option<Vec<u8>> {
    match bits & 0b11 {
        0 => None,
        1 => Some(Vec::new()),
        2 => Some(b"k1".to_vec()),
        _ => Some(b"k2".to_vec()),
    }
}

fn config(
    node: u128,
    versions: std::ops::RangeInclusive<u16>,
    secret: Option<Vec<u8>>,
) -> HandshakeConfig {
    let mut config = HandshakeConfig::new(Uuid::from_u128(node), format!("node-{node}"), secret);
    config.versions = versions;
    config
}

struct Side {
    handshake: Handshake,
    node: Uuid,
    versions: std::ops::RangeInclusive<u16>,
    acceptor: bool,
    failed: bool,
}

impl Side {
    fn new(handshake: Handshake, config: &HandshakeConfig, acceptor: bool) -> Self {
        Side {
            handshake,
            node: config.node,
            versions: config.versions.clone(),
            acceptor,
            failed: false,
        }
    }

    /// Steps through every frame in `bytes`; returns what was sent.
    fn feed(&mut self, bytes: &[u8]) -> Vec<u8> {
        decode_all(bytes)
            .iter()
            .flat_map(|frame| self.step(frame))
            .collect()
    }

    /// Feeds one frame and checks the promises; returns what was sent.
    fn step(&mut self, frame: &Frame<'_>) -> Vec<u8> {
        let was_established = self.handshake.is_established();
        let mut out = Vec::new();
        let result = self.handshake.on_frame(frame, &mut out);
        let sent = decode_all(&out);
        assert!(sent.len() <= 1, "one frame per step at most");
        let sent_type = sent.first().map(Frame::frame_type);
        if self.failed || was_established {
            assert!(result.is_err(), "a finished handshake accepts nothing");
            assert_eq!(sent_type, None, "a finished handshake sends nothing");
            assert_eq!(self.handshake.is_established(), was_established);
        }
        match &result {
            Err(error) => {
                assert!(matches!(sent_type, None | Some(FrameType::Refuse)));
                if !was_established {
                    self.failed = true;
                    assert!(!self.handshake.is_established());
                }
                black_box(error.to_string());
            }
            Ok(None) => {
                assert!(self.acceptor, "only the acceptor has a middle step");
                assert_eq!(sent_type, Some(FrameType::Welcome));
            }
            Ok(Some(peer)) => {
                assert!(self.handshake.is_established());
                assert_ne!(peer.node, self.node);
                assert!(self.versions.contains(&peer.version));
                let expected = if self.acceptor {
                    None
                } else {
                    Some(FrameType::Auth)
                };
                assert_eq!(sent_type, expected);
            }
        }
        out
    }
}

/// The frames at the front of `bytes`, up to the first that does not decode.
fn decode_all(bytes: &[u8]) -> Vec<Frame<'_>> {
    let mut frames = Vec::new();
    let mut rest = bytes;
    while frames.len() < FRAMES_MAX {
        let Ok(Decoded::Frame { frame, len }) = decode(rest) else {
            break;
        };
        frames.push(frame);
        rest = &rest[len..];
    }
    frames
}

#[path = "shared/reseal.rs"]
mod reseal;
