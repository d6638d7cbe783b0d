//! The I/O-free wire protocol, end to end, without sockets or clocks.
//!
//! - Frames: every type round-trips through `encode`/`decode` (proptest), alone and back to back;
//!   every strict prefix is `Incomplete`; every single-bit flip is refused; each malformation is
//!   its own typed error; an oversize length is refused from the 12-byte header alone.
//! - Handshake: two `Handshake`s exchange bytes through `encode`/`decode` until both settle;
//!   secrets, version ranges and node uuids decide the outcome, and the REFUSE frames sent are
//!   checked. MACs are also computed here by the formula in the module docs, so the wire format
//!   (not only self-consistency) is tested.
//! - Liveness: a virtual clock (a base `Instant` plus durations) drives heartbeats and timeouts.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use pagemesh_net::proto::*;
use pagemesh_net::Error;
use proptest::collection::vec;
use proptest::prelude::*;
use sha2::Sha256;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------------
// Frames

/// An owned frame, so proptest can generate it; `frame()` borrows it as a `Frame`.
#[derive(Clone, Debug)]
enum Owned {
    Hello(Hello),
    Welcome(Welcome),
    Auth(Auth),
    Refuse(Refuse),
    Pages {
        database: Uuid,
        origin: Uuid,
        epoch: u64,
        visited: Vec<Uuid>,
        first_lsn: u64,
        pages: Vec<u8>,
    },
    Ack(Ack),
    Resume(Resume),
    Snapshot {
        database: Uuid,
        origin: Uuid,
        snapshot_lsn: u64,
        offset: u64,
        last: bool,
        data: Vec<u8>,
    },
    Heartbeat(Heartbeat),
    Command(u64, Vec<u8>),
    Reply(u64, Vec<u8>),
    Watch(Watch),
    Have(Have),
    Peers(PeerList),
    Receipts(ReceiptReport),
}

impl Owned {
    fn frame(&self) -> Frame<'_> {
        match self {
            Owned::Hello(f) => Frame::Hello(f.clone()),
            Owned::Welcome(f) => Frame::Welcome(f.clone()),
            Owned::Auth(f) => Frame::Auth(f.clone()),
            Owned::Refuse(f) => Frame::Refuse(f.clone()),
            Owned::Pages {
                database,
                origin,
                epoch,
                visited,
                first_lsn,
                pages,
            } => Frame::Pages(Pages {
                database: *database,
                origin: *origin,
                epoch: *epoch,
                visited: visited.clone(),
                first_lsn: *first_lsn,
                pages,
            }),
            Owned::Ack(f) => Frame::Ack(f.clone()),
            Owned::Resume(f) => Frame::Resume(f.clone()),
            Owned::Snapshot {
                database,
                origin,
                snapshot_lsn,
                offset,
                last,
                data,
            } => Frame::Snapshot(SnapshotChunk {
                database: *database,
                origin: *origin,
                snapshot_lsn: *snapshot_lsn,
                offset: *offset,
                last: *last,
                data,
            }),
            Owned::Heartbeat(f) => Frame::Heartbeat(f.clone()),
            Owned::Command(id, payload) => Frame::Command(Message {
                request_id: *id,
                payload,
            }),
            Owned::Reply(id, payload) => Frame::Reply(Message {
                request_id: *id,
                payload,
            }),
            Owned::Receipts(f) => Frame::Receipts(f.clone()),
            Owned::Watch(f) => Frame::Watch(*f),
            Owned::Have(f) => Frame::Have(f.clone()),
            Owned::Peers(f) => Frame::Peers(f.clone()),
        }
    }
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// Up to 16 chars of up to 4 bytes: never over NAME_MAX.
fn peer_entry() -> impl Strategy<Value = PeerEntry> {
    let ip = prop_oneof![
        any::<[u8; 4]>().prop_map(std::net::IpAddr::from),
        any::<[u8; 16]>().prop_map(std::net::IpAddr::from),
    ];
    (
        uuid(),
        any::<u64>(),
        any::<u32>(),
        ip,
        any::<u16>(),
        name(),
        vec(uuid(), 0..=PEER_DATABASES_MAX),
    )
        .prop_map(
            |(node, heartbeat, age_ms, ip, port, name, databases)| PeerEntry {
                node,
                heartbeat,
                age_ms,
                addr: std::net::SocketAddr::new(ip, port),
                name,
                databases,
            },
        )
}

fn name() -> impl Strategy<Value = String> {
    ".{0,16}"
}

fn refuse_code() -> impl Strategy<Value = RefuseCode> {
    (1u16..=8).prop_map(|code| RefuseCode::from_u16(code).unwrap())
}

/// 1 to 3 pages of bytes filled from a seed (random pages would make shrinking slow).
fn page_bytes() -> impl Strategy<Value = Vec<u8>> {
    (1usize..=3, any::<u64>()).prop_map(|(count, seed)| {
        let mut state = seed | 1;
        (0..count * PAGE_SIZE)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect()
    })
}

fn owned_frame() -> impl Strategy<Value = Owned> {
    prop_oneof![
        (any::<(u16, u16)>(), uuid(), any::<[u8; 32]>(), name()).prop_map(
            |((protocol_min, protocol_max), node, nonce, name)| Owned::Hello(Hello {
                protocol_min,
                protocol_max,
                node,
                nonce,
                name,
            })
        ),
        (
            any::<u16>(),
            uuid(),
            any::<[u8; 32]>(),
            any::<[u8; 32]>(),
            name()
        )
            .prop_map(
                |(protocol, node, nonce, mac, name)| Owned::Welcome(Welcome {
                    protocol,
                    node,
                    nonce,
                    mac,
                    name,
                })
            ),
        any::<[u8; 32]>().prop_map(|mac| Owned::Auth(Auth { mac })),
        (refuse_code(), ".{0,100}")
            .prop_map(|(code, reason)| Owned::Refuse(Refuse { code, reason })),
        (
            uuid(),
            uuid(),
            any::<u64>(),
            vec(uuid(), 0..=VISITED_MAX),
            any::<u64>(),
            page_bytes()
        )
            .prop_map(|(database, origin, epoch, visited, first_lsn, pages)| {
                Owned::Pages {
                    database,
                    origin,
                    epoch,
                    visited,
                    first_lsn,
                    pages,
                }
            }),
        (uuid(), uuid(), any::<u64>(), any::<u64>()).prop_map(|(database, origin, a, b)| {
            Owned::Ack(Ack {
                database,
                origin,
                received_lsn: a.max(b),
                durable_lsn: a.min(b),
            })
        }),
        (uuid(), uuid(), any::<u64>(), any::<u64>()).prop_map(
            |(database, origin, epoch, from_lsn)| Owned::Resume(Resume {
                database,
                origin,
                epoch,
                from_lsn,
            })
        ),
        (
            uuid(),
            uuid(),
            any::<u64>(),
            any::<u64>(),
            any::<bool>(),
            vec(any::<u8>(), 0..300)
        )
            .prop_map(|(database, origin, snapshot_lsn, offset, last, data)| {
                Owned::Snapshot {
                    database,
                    origin,
                    snapshot_lsn,
                    offset,
                    last,
                    data,
                }
            }),
        any::<u64>().prop_map(|sent_micros| Owned::Heartbeat(Heartbeat { sent_micros })),
        (any::<u64>(), vec(any::<u8>(), 0..300)).prop_map(|(id, p)| Owned::Command(id, p)),
        (any::<u64>(), vec(any::<u8>(), 0..300)).prop_map(|(id, p)| Owned::Reply(id, p)),
        (
            uuid(),
            uuid(),
            proptest::collection::btree_map(uuid(), any::<u64>(), 1..=RECEIPTS_MAX)
        )
            .prop_map(|(database, origin, entries)| {
                Owned::Receipts(ReceiptReport {
                    database,
                    origin,
                    entries: entries.into_iter().collect(),
                })
            }),
        (uuid(), uuid()).prop_map(|(database, origin)| Owned::Watch(Watch { database, origin })),
        (
            uuid(),
            uuid(),
            any::<u64>(),
            proptest::collection::vec(uuid(), 0..=PATH_MAX)
        )
            .prop_map(|(database, origin, lsn, path)| Owned::Have(Have {
                database,
                origin,
                lsn,
                path
            })),
        (vec(peer_entry(), 1..=PEERS_MAX), any::<bool>()).prop_map(|(entries, named)| {
            // Without the NAMED flag names are not sent: they decode as empty.
            Owned::Peers(PeerList { entries, named }.for_version(if named { 5 } else { 4 }))
        }),
    ]
}

fn encoded(frame: &Frame<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode(frame, &mut out);
    out
}

/// Decodes one whole frame, or panics.
fn decode_one(bytes: &[u8]) -> (Frame<'_>, usize) {
    match decode(bytes) {
        Ok(Decoded::Frame { frame, len }) => (frame, len),
        other => panic!("expected a frame, got {other:?}"),
    }
}

/// A frame with the given header fields and body and a correct crc: for malformations behind
/// the crc check.
fn raw_frame(frame_type: u8, flags: u8, body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&[frame_type, flags, 0, 0]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fn malformed_reason(bytes: &[u8]) -> &'static str {
    match decode(bytes) {
        Err(Error::MalformedFrame { reason, .. }) => reason,
        other => panic!("expected MalformedFrame, got {other:?}"),
    }
}

proptest! {
    #[test]
    fn every_frame_round_trips(owned in owned_frame()) {
        let frame = owned.frame();
        let bytes = encoded(&frame);
        let (back, len) = decode_one(&bytes);
        prop_assert_eq!(len, bytes.len());
        prop_assert_eq!(&back, &frame);
        prop_assert_eq!(encoded(&back), bytes, "encoding is canonical");
    }

    #[test]
    fn frames_back_to_back_decode_in_order(owned in vec(owned_frame(), 1..6)) {
        let mut buf = Vec::new();
        for o in &owned {
            encode(&o.frame(), &mut buf);
        }
        let mut rest = &buf[..];
        for o in &owned {
            let (frame, len) = decode_one(rest);
            prop_assert_eq!(frame, o.frame());
            rest = &rest[len..];
        }
        prop_assert!(rest.is_empty());
        prop_assert_eq!(decode(rest).unwrap(), Decoded::Incomplete { needed: FRAME_HEADER_LEN });
    }

    #[test]
    fn every_strict_prefix_is_incomplete(owned in owned_frame()) {
        let bytes = encoded(&owned.frame());
        for cut in 0..bytes.len() {
            let needed = if cut < FRAME_HEADER_LEN { FRAME_HEADER_LEN } else { bytes.len() };
            prop_assert_eq!(decode(&bytes[..cut]).unwrap(), Decoded::Incomplete { needed });
        }
    }

    #[test]
    fn handshake_outcome_follows_secrets_and_versions(
        secret_c in proptest::option::of(vec(any::<u8>(), 0..3)),
        secret_a in proptest::option::of(vec(any::<u8>(), 0..3)),
        range_c in (1u16..5, 0u16..3),
        range_a in (1u16..5, 0u16..3),
    ) {
        let mut c = config(1, "c", secret_c.clone());
        c.versions = range_c.0..=range_c.0 + range_c.1;
        let mut a = config(2, "a", secret_a.clone());
        a.versions = range_a.0..=range_a.0 + range_a.1;
        let (conn, acc) = run(&c, &a);
        let version = (*c.versions.end()).min(*a.versions.end());
        let versions_meet = version >= (*c.versions.start()).max(*a.versions.start());
        let keys_equal = secret_c.unwrap_or_default() == secret_a.unwrap_or_default();
        prop_assert_eq!(conn.peer.is_some(), versions_meet && keys_equal);
        prop_assert_eq!(acc.peer.is_some(), versions_meet && keys_equal);
        if let (Some(p_c), Some(p_a)) = (&conn.peer, &acc.peer) {
            prop_assert_eq!(p_c.version, version);
            prop_assert_eq!(p_a.version, version);
        }
        let refused = if !versions_meet { Some(RefuseCode::Version) }
            else if !keys_equal { Some(RefuseCode::Auth) } else { None };
        let sent: Vec<_> = conn.refused_with.iter().chain(&acc.refused_with).copied().collect();
        prop_assert_eq!(sent, refused.into_iter().collect::<Vec<_>>());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn every_single_bit_flip_is_refused(owned in owned_frame()) {
        let bytes = encoded(&owned.frame());
        // Bound the work: every bit of the first 256 and the last 64 bytes, a stride in between.
        let bits = (0..bytes.len() * 8)
            .filter(|bit| bit / 8 < 256 || bit / 8 >= bytes.len().saturating_sub(64) || bit % 61 == 0);
        for bit in bits {
            let mut flipped = bytes.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            let result = decode(&flipped);
            prop_assert!(
                matches!(result, Err(_) | Ok(Decoded::Incomplete { .. })),
                "bit {} flipped still decodes: {:?}", bit, result
            );
        }
    }
}

#[test]
fn oversize_length_is_refused_from_the_header_alone() {
    let header = |frame_type: u8, len: u32| {
        let mut h = len.to_le_bytes().to_vec();
        h.extend_from_slice(&[frame_type, 0, 0, 0, 0, 0, 0, 0]);
        h
    };
    let big = (FRAME_BODY_MAX + 1) as u32;
    match decode(&header(FrameType::Pages as u8, big)) {
        Err(Error::FrameTooLarge {
            frame_type: 5,
            len,
            max: FRAME_BODY_MAX,
        }) => assert_eq!(len, FRAME_BODY_MAX + 1),
        other => panic!("{other:?}"),
    }
    // Handshake frames have small limits of their own.
    let hello_max = FrameType::Hello.body_max();
    assert_eq!(hello_max, 53 + NAME_MAX);
    assert!(matches!(
        decode(&header(FrameType::Hello as u8, hello_max as u32 + 1)),
        Err(Error::FrameTooLarge { frame_type: 1, max, .. }) if max == hello_max
    ));
    assert_eq!(
        decode(&header(FrameType::Hello as u8, hello_max as u32)).unwrap(),
        Decoded::Incomplete {
            needed: FRAME_HEADER_LEN + hello_max
        }
    );
    assert!(matches!(
        decode(&header(FrameType::Heartbeat as u8, u32::MAX)),
        Err(Error::FrameTooLarge { .. })
    ));
}

#[test]
fn a_reader_refuses_what_it_does_not_accept_by_the_header_alone() {
    let header = |frame_type: u8, len: usize| {
        let mut h = (len as u32).to_le_bytes().to_vec();
        h.extend_from_slice(&[frame_type, 0, 0, 0, 0, 0, 0, 0]);
        h
    };
    for byte in 1..=11u8 {
        let frame_type = FrameType::from_u8(byte).unwrap();
        let small = header(byte, frame_type.body_max().min(16));
        let verdict = check_header(&small, Accept::Handshake);
        if frame_type.is_handshake() {
            assert!(verdict.is_ok(), "{}: {verdict:?}", frame_type.name());
            assert!(frame_type.body_max() <= HANDSHAKE_BODY_MAX);
        } else {
            // Before authentication: refused by its type, so the 16 MiB a PAGES header may
            // announce is never read.
            assert!(
                matches!(verdict, Err(Error::UnexpectedFrame { frame, .. }) if frame == frame_type.name()),
                "{}: {verdict:?}",
                frame_type.name()
            );
        }
        // A control link (a source's link from a replica) takes any type, but only small bodies.
        assert!(check_header(&small, Accept::Control).is_ok());
        assert!(check_header(&small, Accept::Bulk).is_ok());
        if frame_type.body_max() > CONTROL_BODY_MAX {
            let big = header(byte, FRAME_BODY_MAX);
            assert!(matches!(
                check_header(&big, Accept::Control),
                Err(Error::FrameTooLarge {
                    max: CONTROL_BODY_MAX,
                    ..
                })
            ));
            assert!(check_header(&big, Accept::Handshake).is_err());
            assert!(check_header(&big, Accept::Bulk).is_ok());
        }
    }
    assert!(matches!(
        check_header(
            &header(FrameType::Refuse as u8, HANDSHAKE_BODY_MAX + 1),
            Accept::Handshake
        ),
        Err(Error::FrameTooLarge { .. })
    ));
    for accept in [Accept::Handshake, Accept::Control, Accept::Bulk] {
        assert!(check_header(&header(0, 0), accept).is_err());
        assert!(check_header(&[1, 0, 0], accept).is_err());
    }
}

#[test]
fn header_faults_are_typed() {
    let good = encoded(&Frame::Heartbeat(Heartbeat { sent_micros: 7 }));
    let mut unknown = good.clone();
    unknown[4] = 16;
    assert!(matches!(
        decode(&unknown),
        Err(Error::UnknownFrameType { frame_type: 16 })
    ));
    assert!(matches!(
        decode(&raw_frame(0, 0, &[])),
        Err(Error::UnknownFrameType { frame_type: 0 })
    ));

    let mut crc = good.clone();
    crc[12] ^= 0x40;
    assert!(matches!(
        decode(&crc),
        Err(Error::FrameCrc { frame_type: 9, expected, actual }) if expected != actual
    ));

    let mut reserved = raw_frame(9, 0, &7u64.to_le_bytes());
    reserved[7] = 1;
    assert_eq!(malformed_reason(&reserved), "reserved header bits set");
    let flags = raw_frame(9, 1, &7u64.to_le_bytes());
    assert_eq!(malformed_reason(&flags), "undefined flag bits set");
    let snapshot_body = [0u8; 48];
    assert!(decode(&raw_frame(8, FLAG_SNAPSHOT_LAST, &snapshot_body)).is_ok());
    assert_eq!(
        malformed_reason(&raw_frame(8, 2, &snapshot_body)),
        "undefined flag bits set"
    );
}

#[test]
fn body_faults_are_typed() {
    let heartbeat = 7u64.to_le_bytes();
    assert_eq!(
        malformed_reason(&raw_frame(9, 0, &heartbeat[..7])),
        "body too short"
    );
    assert_eq!(
        malformed_reason(&raw_frame(9, 0, &[0; 8][..0])),
        "body too short"
    );
    let mut trailing = heartbeat.to_vec();
    trailing.push(0);
    // HEARTBEAT's body_max is 8: a 9-byte body is too large before it is trailing bytes.
    assert!(matches!(
        decode(&raw_frame(9, 0, &trailing)),
        Err(Error::FrameTooLarge { .. })
    ));
    assert_eq!(
        malformed_reason(&raw_frame(3, 0, &[0; 31])),
        "body too short"
    );

    let hello = |name: &[u8], name_len: u8| {
        let mut body = vec![1, 0, 1, 0];
        body.extend_from_slice(&[7; 16 + 32]);
        body.push(name_len);
        body.extend_from_slice(name);
        raw_frame(1, 0, &body)
    };
    assert!(decode(&hello(&[b'n'; 64], 64)).is_ok());
    assert_eq!(
        malformed_reason(&hello(&[b'n'; 64], 65)),
        "name longer than 64 bytes"
    );
    assert_eq!(malformed_reason(&hello(&[0xC3, 0x28], 2)), "not UTF-8");
    assert_eq!(malformed_reason(&hello(b"ab", 3)), "body too short");
    assert_eq!(malformed_reason(&hello(b"abc", 2)), "trailing bytes");

    let refuse = |code: u16, reason: &[u8]| {
        let mut body = code.to_le_bytes().to_vec();
        body.extend_from_slice(&(reason.len() as u16).to_le_bytes());
        body.extend_from_slice(reason);
        raw_frame(4, 0, &body)
    };
    assert!(decode(&refuse(7, b"fenced")).is_ok());
    assert_eq!(malformed_reason(&refuse(0, b"x")), "unknown refuse code");
    assert!(decode(&refuse(8, b"routing loop")).is_ok());
    assert_eq!(malformed_reason(&refuse(9, b"x")), "unknown refuse code");
    let mut long = 1025u16.to_le_bytes().to_vec();
    long.splice(0..0, 1u16.to_le_bytes());
    long.extend_from_slice(&[b'r'; 1024]);
    assert_eq!(
        malformed_reason(&raw_frame(4, 0, &long)),
        "reason longer than 1024 bytes"
    );

    let mut ack = [0u8; 48];
    ack[32..40].copy_from_slice(&5u64.to_le_bytes());
    ack[40..48].copy_from_slice(&6u64.to_le_bytes());
    assert_eq!(
        malformed_reason(&raw_frame(6, 0, &ack)),
        "durable_lsn above received_lsn"
    );
}

#[test]
fn pages_faults_are_typed() {
    let pages = |visited: u8, page_count: u32, page_bytes: usize| {
        let mut body = vec![0u8; 40];
        body.push(visited);
        body.extend(std::iter::repeat_n(3u8, usize::from(visited) * 16));
        body.extend_from_slice(&9u64.to_le_bytes());
        body.extend_from_slice(&page_count.to_le_bytes());
        body.extend(std::iter::repeat_n(0xAB, page_bytes));
        raw_frame(5, 0, &body)
    };
    match decode_one(&pages(32, 2, 2 * PAGE_SIZE)).0 {
        Frame::Pages(p) => {
            assert_eq!(p.visited.len(), 32);
            assert_eq!(p.page_count(), 2);
            assert_eq!(p.first_lsn, 9);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        malformed_reason(&pages(33, 1, PAGE_SIZE)),
        "visited list longer than 32"
    );
    assert_eq!(
        malformed_reason(&pages(0, 0, 0)),
        "page_count out of 1..=4095"
    );
    assert_eq!(
        malformed_reason(&pages(0, 4096, PAGE_SIZE)),
        "page_count out of 1..=4095"
    );
    for bytes in [PAGE_SIZE - 1, PAGE_SIZE + 1, 2 * PAGE_SIZE] {
        assert_eq!(
            malformed_reason(&pages(0, 1, bytes)),
            "page bytes differ from page_count"
        );
    }
    let mut short = vec![0u8; 40];
    short.push(2); // two visited uuids announced, one present
    short.extend_from_slice(&[3; 16]);
    assert_eq!(malformed_reason(&raw_frame(5, 0, &short)), "body too short");
}

#[test]
fn every_type_names_itself() {
    let frame = Frame::Heartbeat(Heartbeat { sent_micros: 0 });
    assert_eq!(frame.kind(), "HEARTBEAT");
    for byte in 1..=15u8 {
        let ty = FrameType::from_u8(byte).unwrap();
        assert_eq!(ty as u8, byte);
        assert!(!ty.name().is_empty());
    }
    assert_eq!(FrameType::from_u8(16), None);
    assert_eq!(FrameType::from_u8(0), None);
}

// ---------------------------------------------------------------------------------------------
// Handshake

const NONCE_C: [u8; 32] = [0xC1; 32];
const NONCE_A: [u8; 32] = [0xA2; 32];
const SECRET: &[u8] = b"cluster secret";

fn config(node: u128, name: &str, secret: Option<Vec<u8>>) -> HandshakeConfig {
    HandshakeConfig::new(Uuid::from_u128(node), name, secret)
}

fn secret() -> Option<Vec<u8>> {
    Some(SECRET.to_vec())
}

/// How one side of a handshake ended.
#[derive(Debug, Default)]
struct Side {
    peer: Option<PeerInfo>,
    error: Option<Error>,
    /// Codes of the REFUSE frames this side sent.
    refused_with: Vec<RefuseCode>,
}

impl Side {
    /// Feeds every frame in `bytes` to `handshake` (until it errs), collecting what it sends.
    fn receive(&mut self, handshake: &mut Handshake, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = bytes;
        while let Ok(Decoded::Frame { frame, len }) = decode(rest) {
            rest = &rest[len..];
            if self.error.is_some() {
                break;
            }
            let sent_from = out.len();
            match handshake.on_frame(&frame, &mut out) {
                Ok(Some(peer)) => self.peer = Some(peer),
                Ok(None) => {}
                Err(error) => self.error = Some(error),
            }
            self.note_refusals(&out[sent_from..]);
        }
        assert!(rest.is_empty(), "a side sent bytes that do not decode");
        out
    }

    fn note_refusals(&mut self, mut sent: &[u8]) {
        while let Ok(Decoded::Frame { frame, len }) = decode(sent) {
            if let Frame::Refuse(refuse) = frame {
                self.refused_with.push(refuse.code);
            }
            sent = &sent[len..];
        }
    }
}

/// Runs a connector and an acceptor against each other until neither has anything to send.
fn run(connector: &HandshakeConfig, acceptor: &HandshakeConfig) -> (Side, Side) {
    let now = Instant::now();
    let mut to_acceptor = Vec::new();
    let mut c = Handshake::connect(connector, NONCE_C, now, &mut to_acceptor);
    let mut a = Handshake::accept(acceptor, NONCE_A, now);
    let (mut conn, mut acc) = (Side::default(), Side::default());
    for _round in 0..4 {
        let to_connector = acc.receive(&mut a, &to_acceptor);
        to_acceptor = conn.receive(&mut c, &to_connector);
        if to_acceptor.is_empty() && to_connector.is_empty() {
            break;
        }
    }
    assert!(to_acceptor.is_empty(), "handshake did not settle");
    assert_eq!(c.is_established(), conn.peer.is_some());
    assert_eq!(a.is_established(), acc.peer.is_some());
    (conn, acc)
}

fn hmac(secret: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let key = pagemesh_net::proto::handshake::derive_key(secret);
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    for part in parts {
        mac.update(part);
    }
    mac.finalize().into_bytes().into()
}

fn welcome_mac(secret: &[u8], node_c: Uuid, node_a: Uuid) -> [u8; 32] {
    hmac(
        secret,
        &[
            b"pagemesh/welcome",
            &NONCE_C,
            &NONCE_A,
            node_c.as_bytes(),
            node_a.as_bytes(),
        ],
    )
}

fn auth_mac(secret: &[u8], node_c: Uuid, node_a: Uuid) -> [u8; 32] {
    hmac(
        secret,
        &[
            b"pagemesh/auth",
            &NONCE_A,
            &NONCE_C,
            node_a.as_bytes(),
            node_c.as_bytes(),
        ],
    )
}

/// The one frame a handshake step sent.
fn sent_frame(out: &[u8]) -> Frame<'_> {
    let (frame, len) = decode_one(out);
    assert_eq!(len, out.len(), "one frame per step");
    frame
}

fn refused_with(out: &[u8]) -> RefuseCode {
    match sent_frame(out) {
        Frame::Refuse(refuse) => refuse.code,
        other => panic!("expected REFUSE, sent {other:?}"),
    }
}

#[test]
fn same_secret_establishes_both_ways() {
    let c = config(1, "alpha", secret());
    let a = config(2, "beta", secret());
    let (conn, acc) = run(&c, &a);
    let expect = |node: u128, name: &str| PeerInfo {
        node: Uuid::from_u128(node),
        name: name.to_owned(),
        version: PROTOCOL_VERSION,
    };
    assert_eq!(conn.peer, Some(expect(2, "beta")));
    assert_eq!(acc.peer, Some(expect(1, "alpha")));
    assert!(conn.error.is_none() && acc.error.is_none());
    assert!(conn.refused_with.is_empty() && acc.refused_with.is_empty());

    // And the roles swapped.
    let (conn, acc) = run(&a, &c);
    assert_eq!(conn.peer, Some(expect(1, "alpha")));
    assert_eq!(acc.peer, Some(expect(2, "beta")));
}

#[test]
fn no_secret_on_both_sides_establishes() {
    let (conn, acc) = run(&config(1, "c", None), &config(2, "a", None));
    assert!(conn.peer.is_some() && acc.peer.is_some());
}

#[test]
fn wrong_secret_is_refused_by_the_connector() {
    let (conn, acc) = run(
        &config(1, "c", secret()),
        &config(2, "a", Some(b"other".to_vec())),
    );
    assert!(matches!(conn.error, Some(Error::AuthFailed { ref peer }) if peer.contains("a (")));
    assert_eq!(conn.refused_with, [RefuseCode::Auth]);
    assert!(matches!(acc.error, Some(Error::Refused { code: 3, .. })));
    assert!(conn.peer.is_none() && acc.peer.is_none());
}

#[test]
fn wrong_secret_is_refused_by_the_acceptor() {
    let (node_c, node_a) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let mut a = Handshake::accept(&config(2, "a", secret()), NONCE_A, Instant::now());
    let mut out = Vec::new();
    let hello = Hello {
        protocol_min: 1,
        protocol_max: 1,
        node: node_c,
        nonce: NONCE_C,
        name: "c".into(),
    };
    assert_eq!(a.on_frame(&Frame::Hello(hello), &mut out).unwrap(), None);
    let Frame::Welcome(welcome) = sent_frame(&out) else {
        panic!("no WELCOME")
    };
    assert_eq!(
        welcome.mac,
        welcome_mac(SECRET, node_c, node_a),
        "documented MAC"
    );

    let forged = Auth {
        mac: auth_mac(b"other", node_c, node_a),
    };
    out.clear();
    let error = a.on_frame(&Frame::Auth(forged), &mut out).unwrap_err();
    assert!(matches!(error, Error::AuthFailed { ref peer } if peer.contains("c (")));
    assert_eq!(refused_with(&out), RefuseCode::Auth);
    assert!(!a.is_established());
}

#[test]
fn documented_auth_mac_is_accepted() {
    let (node_c, node_a) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let mut a = Handshake::accept(&config(2, "a", secret()), NONCE_A, Instant::now());
    let mut out = Vec::new();
    let hello = Hello {
        protocol_min: 1,
        protocol_max: 9,
        node: node_c,
        nonce: NONCE_C,
        name: "c".into(),
    };
    a.on_frame(&Frame::Hello(hello), &mut out).unwrap();
    let auth = Auth {
        mac: auth_mac(SECRET, node_c, node_a),
    };
    let peer = a.on_frame(&Frame::Auth(auth), &mut out).unwrap().unwrap();
    assert_eq!(peer.node, node_c);
    assert_eq!(peer.version, PROTOCOL_VERSION);
    assert!(a.is_established());
}

#[test]
fn secret_and_no_secret_refuse_each_other() {
    for (sc, sa) in [(secret(), None), (None, secret())] {
        let (conn, acc) = run(&config(1, "c", sc), &config(2, "a", sa));
        assert!(matches!(conn.error, Some(Error::AuthFailed { .. })));
        assert_eq!(conn.refused_with, [RefuseCode::Auth]);
        assert!(matches!(acc.error, Some(Error::Refused { code: 3, .. })));
    }
}

#[test]
fn disjoint_versions_are_refused() {
    let mut c = config(1, "c", secret());
    c.versions = 1..=1;
    let mut a = config(2, "a", secret());
    a.versions = 2..=3;
    let (conn, acc) = run(&c, &a);
    assert!(matches!(
        acc.error,
        Some(Error::VersionMismatch {
            ours: (2, 3),
            theirs: (1, 1)
        })
    ));
    assert_eq!(acc.refused_with, [RefuseCode::Version]);
    assert!(matches!(conn.error, Some(Error::Refused { code: 2, .. })));
}

#[test]
fn overlapping_versions_pick_the_highest_common() {
    let mut c = config(1, "c", secret());
    c.versions = 1..=3;
    let mut a = config(2, "a", secret());
    a.versions = 2..=5;
    let (conn, acc) = run(&c, &a);
    assert_eq!(conn.peer.unwrap().version, 3);
    assert_eq!(acc.peer.unwrap().version, 3);
}

#[test]
fn connector_refuses_a_version_it_did_not_offer() {
    let (node_c, node_a) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let mut out = Vec::new();
    let mut c = Handshake::connect(&config(1, "c", secret()), NONCE_C, Instant::now(), &mut out);
    let welcome = Welcome {
        protocol: PROTOCOL_VERSION + 1,
        node: node_a,
        nonce: NONCE_A,
        mac: welcome_mac(SECRET, node_c, node_a),
        name: "a".into(),
    };
    out.clear();
    let error = c.on_frame(&Frame::Welcome(welcome), &mut out).unwrap_err();
    assert!(matches!(error, Error::VersionMismatch { .. }));
    assert_eq!(refused_with(&out), RefuseCode::Version);
}

#[test]
fn duplicate_node_is_refused() {
    let (conn, acc) = run(&config(7, "c", secret()), &config(7, "a", secret()));
    assert!(matches!(acc.error, Some(Error::DuplicateNode { node }) if node == Uuid::from_u128(7)));
    assert_eq!(acc.refused_with, [RefuseCode::DuplicateNode]);
    assert!(matches!(conn.error, Some(Error::Refused { code: 4, .. })));

    // A WELCOME (with a right MAC) claiming the connector's own uuid.
    let node = Uuid::from_u128(7);
    let mut out = Vec::new();
    let mut c = Handshake::connect(&config(7, "c", secret()), NONCE_C, Instant::now(), &mut out);
    let welcome = Welcome {
        protocol: PROTOCOL_VERSION,
        node,
        nonce: NONCE_A,
        mac: welcome_mac(SECRET, node, node),
        name: "a".into(),
    };
    out.clear();
    let error = c.on_frame(&Frame::Welcome(welcome), &mut out).unwrap_err();
    assert!(matches!(error, Error::DuplicateNode { .. }));
    assert_eq!(refused_with(&out), RefuseCode::DuplicateNode);
}

#[test]
fn unexpected_frames_are_refused() {
    let now = Instant::now();
    let heartbeat = Frame::Heartbeat(Heartbeat { sent_micros: 1 });
    let mut out = Vec::new();
    let mut a = Handshake::accept(&config(2, "a", secret()), NONCE_A, now);
    match a.on_frame(&heartbeat, &mut out) {
        Err(Error::UnexpectedFrame {
            state: "awaiting HELLO",
            frame: "HEARTBEAT",
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(refused_with(&out), RefuseCode::Protocol);
    // Failed for good: later frames are errors too, and nothing more is sent.
    out.clear();
    let hello = Frame::Hello(Hello {
        protocol_min: 1,
        protocol_max: 1,
        node: Uuid::from_u128(1),
        nonce: NONCE_C,
        name: String::new(),
    });
    assert!(matches!(
        a.on_frame(&hello, &mut out),
        Err(Error::UnexpectedFrame {
            state: "failed",
            ..
        })
    ));
    assert!(out.is_empty());

    let mut c = Handshake::connect(&config(1, "c", secret()), NONCE_C, now, &mut out);
    out.clear();
    assert!(matches!(
        c.on_frame(&hello, &mut out),
        Err(Error::UnexpectedFrame {
            state: "awaiting WELCOME",
            frame: "HELLO"
        })
    ));
    assert_eq!(refused_with(&out), RefuseCode::Protocol);
    assert!(!c.is_established());
}

#[test]
fn refuse_received_is_an_error_in_any_state() {
    let mut out = Vec::new();
    let mut c = Handshake::connect(&config(1, "c", secret()), NONCE_C, Instant::now(), &mut out);
    out.clear();
    let refuse = Frame::Refuse(Refuse::new(RefuseCode::ShuttingDown, "bye"));
    match c.on_frame(&refuse, &mut out) {
        Err(Error::Refused { code: 5, reason }) => assert_eq!(reason, "bye"),
        other => panic!("{other:?}"),
    }
    assert!(out.is_empty(), "no REFUSE in answer to a REFUSE");
}

#[test]
fn long_names_are_cut_to_the_limit() {
    let long = "ü".repeat(40); // 80 bytes
    let (conn, acc) = run(&config(1, &long, secret()), &config(2, "a", secret()));
    assert_eq!(acc.peer.unwrap().name, "ü".repeat(32));
    assert!(conn.peer.is_some());
}

#[test]
fn deadline_is_creation_plus_timeout() {
    let t0 = Instant::now();
    let mut cfg = config(1, "c", secret());
    cfg.timeout = Duration::from_secs(3);
    let a = Handshake::accept(&cfg, NONCE_A, t0);
    assert_eq!(a.deadline(), t0 + Duration::from_secs(3));
    assert!(a.check_deadline(t0 + Duration::from_millis(2999)).is_ok());
    assert!(matches!(
        a.check_deadline(t0 + Duration::from_secs(3)),
        Err(Error::HandshakeTimeout)
    ));

    let c = Handshake::connect(&cfg, NONCE_C, t0, &mut Vec::new());
    assert_eq!(c.deadline(), t0 + Duration::from_secs(3));
}

#[test]
fn debug_never_shows_the_secret() {
    let cfg = config(1, "c", Some(b"hunter2-secret".to_vec()));
    let shown = format!(
        "{cfg:?} {:?}",
        Handshake::accept(&cfg, NONCE_A, Instant::now())
    );
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(!shown.contains("104, 117, 110"), "{shown}"); // "hun" as bytes
    assert!(shown.contains("redacted"));
}

// ---------------------------------------------------------------------------------------------
// Liveness

fn liveness() -> (Instant, Liveness) {
    let t0 = Instant::now();
    (
        t0,
        Liveness::new(t0, HEARTBEAT_INTERVAL_DEFAULT, LINK_TIMEOUT_DEFAULT),
    )
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

#[test]
fn heartbeat_is_due_after_the_interval_without_sending() {
    let (t0, mut live) = liveness();
    assert_eq!(
        live.poll(t0),
        LinkAction::Wait {
            until: t0 + ms(1000)
        }
    );
    assert_eq!(
        live.poll(t0 + ms(999)),
        LinkAction::Wait {
            until: t0 + ms(1000)
        }
    );
    assert_eq!(live.poll(t0 + ms(1000)), LinkAction::SendHeartbeat);
    // The heartbeat counts as sent.
    assert_eq!(
        live.poll(t0 + ms(1000)),
        LinkAction::Wait {
            until: t0 + ms(2000)
        }
    );
    // Any other frame sent postpones the next heartbeat.
    live.on_send(t0 + ms(1500));
    assert_eq!(
        live.poll(t0 + ms(2000)),
        LinkAction::Wait {
            until: t0 + ms(2500)
        }
    );
}

#[test]
fn silent_peer_times_out() {
    let (t0, mut live) = liveness();
    live.on_send(t0 + ms(4500));
    assert_eq!(
        live.poll(t0 + ms(4999)),
        LinkAction::Wait {
            until: t0 + ms(5000)
        }
    );
    assert_eq!(
        live.poll(t0 + ms(5000)),
        LinkAction::TimedOut {
            silent_for: ms(5000)
        }
    );
    assert_eq!(
        live.poll(t0 + ms(7000)),
        LinkAction::TimedOut {
            silent_for: ms(7000)
        }
    );
}

#[test]
fn receiving_resets_the_timeout() {
    let (t0, mut live) = liveness();
    live.on_receive(t0 + ms(4000));
    live.on_send(t0 + ms(8500));
    assert_eq!(
        live.poll(t0 + ms(8999)),
        LinkAction::Wait {
            until: t0 + ms(9000)
        }
    );
    assert!(
        matches!(live.poll(t0 + ms(9000)), LinkAction::TimedOut { silent_for } if silent_for == ms(5000))
    );
    // A late report of an older receipt does not move the clock back.
    live.on_receive(t0 + ms(9500));
    live.on_receive(t0 + ms(100));
    live.on_send(t0 + ms(9500));
    assert_eq!(
        live.poll(t0 + ms(10000)),
        LinkAction::Wait {
            until: t0 + ms(10500)
        }
    );
}

#[test]
fn a_have_without_a_path_is_version_3s_and_a_path_is_bounded() {
    let (database, origin) = (Uuid::from_u128(1), Uuid::from_u128(2));
    let have = |path: Vec<Uuid>| {
        Frame::Have(Have {
            database,
            origin,
            lsn: 9,
            path,
        })
    };
    // No path: exactly the 40 bytes a version 3 node reads.
    let bare = encoded(&have(Vec::new()));
    assert_eq!(bare.len(), FRAME_HEADER_LEN + 40);
    let mut body = Vec::new();
    body.extend_from_slice(database.as_bytes());
    body.extend_from_slice(origin.as_bytes());
    body.extend_from_slice(&9u64.to_le_bytes());
    assert_eq!(bare, raw_frame(14, 0, &body));
    // A path: a count and the nodes, nearest first.
    let path: Vec<Uuid> = (10..13).map(Uuid::from_u128).collect();
    let with_path = encoded(&have(path.clone()));
    assert_eq!(decode_one(&with_path).0, have(path));
    // A count of 0 would be a second encoding of no path; more than PATH_MAX is refused.
    let mut empty = body.clone();
    empty.push(0);
    assert_eq!(
        malformed_reason(&raw_frame(14, 0, &empty)),
        "path count out of 1..=32"
    );
    let mut long = body.clone();
    long.push(PATH_MAX as u8 + 1);
    long.extend_from_slice(Uuid::from_u128(3).as_bytes());
    assert_eq!(
        malformed_reason(&raw_frame(14, 0, &long)),
        "path count out of 1..=32"
    );
    // And a body with room for more is refused by its header alone.
    for node in 0..PATH_MAX as u128 {
        long.extend_from_slice(Uuid::from_u128(node).as_bytes());
    }
    assert!(matches!(
        decode(&raw_frame(14, 0, &long)),
        Err(Error::FrameTooLarge { .. })
    ));
    // A path of PATH_MAX nodes fits a control link's bodies.
    let longest = encoded(&have(vec![Uuid::from_u128(5); PATH_MAX]));
    assert!(longest.len() - FRAME_HEADER_LEN <= CONTROL_BODY_MAX);
}

#[test]
fn peers_faults_are_typed() {
    let entry = |family: u8, ip: &[u8], dbs: u8| {
        let mut body = Uuid::from_u128(1).as_bytes().to_vec();
        body.extend_from_slice(&7u64.to_le_bytes());
        body.extend_from_slice(&250u32.to_le_bytes());
        body.push(family);
        body.extend_from_slice(ip);
        body.extend_from_slice(&7400u16.to_le_bytes());
        body.push(dbs);
        for db in 0..dbs {
            body.extend_from_slice(Uuid::from_u128(u128::from(db)).as_bytes());
        }
        body
    };
    let peers = |count: u8, entries: &[Vec<u8>]| {
        let mut body = vec![count];
        entries.iter().for_each(|e| body.extend_from_slice(e));
        raw_frame(15, 0, &body)
    };
    let good = entry(4, &[127, 0, 0, 1], 2);
    match decode_one(&peers(1, std::slice::from_ref(&good))).0 {
        Frame::Peers(list) => {
            assert_eq!(list.entries[0].addr, "127.0.0.1:7400".parse().unwrap());
            assert_eq!(list.entries[0].databases.len(), 2);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(malformed_reason(&peers(0, &[])), "peer count out of 1..=16");
    assert_eq!(
        malformed_reason(&peers(17, std::slice::from_ref(&good))),
        "peer count out of 1..=16"
    );
    assert_eq!(
        malformed_reason(&peers(1, &[entry(5, &[127, 0, 0, 1], 0)])),
        "address family not 4 or 6"
    );
    assert_eq!(
        malformed_reason(&peers(1, &[entry(4, &[127, 0, 0, 1], 9)])),
        "more than 8 databases"
    );
    assert_eq!(
        malformed_reason(&peers(2, std::slice::from_ref(&good))),
        "body too short"
    );
    assert_eq!(
        malformed_reason(&peers(1, &[good.clone(), vec![0]])),
        "trailing bytes"
    );
    // Sixteen entries at their largest fit a control link's bodies.
    let largest = entry(6, &[0; 16], 8);
    let full: Vec<Vec<u8>> = vec![largest; 16];
    assert!(peers(16, &full).len() - FRAME_HEADER_LEN <= CONTROL_BODY_MAX);
    assert!(decode(&peers(16, &full)).is_ok());
    // Named (protocol version 5): sixteen entries with the longest names still fit, and a name
    // over the bound is refused.
    let named = largest_named_peers();
    let mut out = Vec::new();
    encode(&Frame::Peers(named.clone()), &mut out);
    assert!(out.len() - FRAME_HEADER_LEN <= CONTROL_BODY_MAX);
    assert_eq!(decode_one(&out).0, Frame::Peers(named));
    let mut long = entry(4, &[127, 0, 0, 1], 0);
    long.truncate(16 + 8 + 4 + 1 + 4 + 2);
    long.push(65);
    long.extend_from_slice(&[b'x'; 65]);
    long.push(0);
    let mut body = vec![1];
    body.extend_from_slice(&long);
    assert_eq!(
        malformed_reason(&raw_frame(15, 1, &body)),
        "name longer than 64 bytes"
    );
    // Without the flag the same bytes are not a name: the entry does not parse.
    assert!(decode(&raw_frame(15, 0, &body)).is_err());
}

/// Sixteen PEERS entries at their largest, with names.
fn largest_named_peers() -> PeerList {
    let entry = PeerEntry {
        node: Uuid::from_u128(1),
        heartbeat: u64::MAX,
        age_ms: u32::MAX,
        addr: "[::1]:7400".parse().unwrap(),
        name: "é".repeat(NAME_MAX / 2),
        databases: (0..8).map(Uuid::from_u128).collect(),
    };
    PeerList {
        entries: vec![entry; PEERS_MAX],
        named: true,
    }
}

// ---------------------------------------------------------------------------------------------
// The frame fuzzer's seeds

/// The frame fuzzer's seed corpus, `fuzz/seeds/frame_decode/`: one well-formed frame of every
/// type, so that a short fuzz run (CI gives it 20 s) starts past the crc and inside every body
/// decoder instead of discovering each type's layout by chance. This test fails when a frame
/// type has no seed or a seed no longer decodes (a format change); rewrite the seeds with
/// `PAGEMESH_BLESS_SEEDS=1 cargo test -p pagemesh-net --test proto fuzz_seeds`.
#[test]
fn fuzz_seeds_cover_every_frame_type() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;

    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/frame_decode");
    if std::env::var_os("PAGEMESH_BLESS_SEEDS").is_some() {
        let mut runner = TestRunner::deterministic();
        let mut seeds = std::collections::BTreeMap::new();
        for _ in 0..100_000 {
            let owned = owned_frame().new_tree(&mut runner).unwrap().current();
            let frame = owned.frame();
            seeds
                .entry(frame.frame_type() as u8)
                .or_insert_with(|| (frame.kind(), encoded(&frame)));
            if seeds.len() == 15 {
                break;
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (byte, (kind, bytes)) in &seeds {
            std::fs::write(
                dir.join(format!("{byte:02}-{}", kind.to_lowercase())),
                bytes,
            )
            .unwrap();
        }
        // PEERS both ways: the generated one and a named one (protocol version 5).
        let named = encoded(&Frame::Peers(largest_named_peers()));
        std::fs::write(dir.join("15-peers-named"), named).unwrap();
    }
    let mut covered = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&dir).expect("fuzz/seeds/frame_decode exists") {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let (frame, len) = decode_one(&bytes);
        assert_eq!(len, bytes.len(), "{}: one whole frame", path.display());
        covered.insert(frame.frame_type() as u8);
    }
    let missing: Vec<_> = (1..=15u8).filter(|byte| !covered.contains(byte)).collect();
    assert!(
        missing.is_empty(),
        "frame types without a fuzz seed: {missing:?}"
    );
}
