//! The link handshake: version negotiation and mutual HMAC-SHA256 authentication.
//!
//! ```text
//! connector                                              acceptor
//!   HELLO   {min, max, node_c, nonce_c, name_c}   ──▶
//!                                                 ◀──   WELCOME {version, node_a, nonce_a, mac_a, name_a}
//!   AUTH    {mac_c}                               ──▶
//!
//! mac_a = HMAC(secret, "pagemesh/welcome" ‖ nonce_c ‖ nonce_a ‖ node_c ‖ node_a)
//! mac_c = HMAC(secret, "pagemesh/auth"    ‖ nonce_a ‖ nonce_c ‖ node_a ‖ node_c)
//! ```
//!
//! The acceptor picks `version = min(our max, their max)` if that is at least
//! `max(our min, their min)`. Each side proves it holds the cluster secret by MACing the other
//! side's fresh nonce; MACs are compared in constant time. A node without a secret uses the empty
//! secret, so a node with a secret and a node without one refuse each other.
//!
//! The HMAC key is `SHA-256("pagemesh/cluster-secret\0" ‖ secret)`, not the secret itself: HMAC
//! pads keys with zero bytes, so with raw keys the secrets `s` and `s‖0x00` (and a secret of zero
//! bytes and no secret at all) would authenticate each other. Found by the handshake proptest.
//!
//! Whoever refuses appends a REFUSE frame for the transport to send before closing: `Version`,
//! `Auth`, `DuplicateNode` (the peer has our node uuid), or `Protocol` (a frame out of turn). A
//! REFUSE received ends the handshake with [`Error::Refused`]. After any error the handshake is
//! failed and stays so.
//!
//! The handshake authenticates the peers when the link opens; it does not sign or encrypt the
//! frames that follow.

use std::fmt;
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use super::frame::{
    encode, truncate_utf8, Auth, Frame, Hello, Refuse, RefuseCode, Welcome, NAME_MAX,
    PROTOCOL_VERSION, PROTOCOL_VERSION_MIN,
};
use crate::error::{Error, Result};

/// How long a handshake may take by default: it takes two round trips, so this leaves room for
/// slow networks while an accepted connection that never authenticates frees its slot soon (an
/// unauthenticated connection's slot is what a flood competes for: `service::admission`).
pub const HANDSHAKE_TIMEOUT_DEFAULT: Duration = Duration::from_secs(3);

const WELCOME_DOMAIN: &[u8] = b"pagemesh/welcome";
const AUTH_DOMAIN: &[u8] = b"pagemesh/auth";

/// What a node brings to every handshake.
#[derive(Clone)]
pub struct HandshakeConfig {
    /// This node's uuid.
    pub node: Uuid,
    /// This node's name; only its first [`NAME_MAX`] bytes (cut on a char boundary) are sent.
    pub name: String,
    /// The cluster secret; `None` is the empty key.
    pub secret: Option<Vec<u8>>,
    /// The protocol versions this node speaks.
    pub versions: RangeInclusive<u16>,
    /// How long a handshake may take.
    pub timeout: Duration,
}

impl HandshakeConfig {
    /// A config speaking every version this build supports, with the default timeout.
    pub fn new(node: Uuid, name: impl Into<String>, secret: Option<Vec<u8>>) -> Self {
        HandshakeConfig {
            node,
            name: name.into(),
            secret,
            versions: PROTOCOL_VERSION_MIN..=PROTOCOL_VERSION,
            timeout: HANDSHAKE_TIMEOUT_DEFAULT,
        }
    }
}

impl fmt::Debug for HandshakeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeConfig")
            .field("node", &self.node)
            .field("name", &self.name)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("versions", &self.versions)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Who is at the other end of an established link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's node uuid.
    pub node: Uuid,
    /// The peer's node name.
    pub name: String,
    /// The protocol version the link speaks.
    pub version: u16,
}

/// One side of one link's handshake. Feed it every frame received with [`Handshake::on_frame`]
/// and send what it appends; close the link if it errs or its [`Handshake::deadline`] passes.
pub struct Handshake {
    node: Uuid,
    name: String,
    key: Hmac<Sha256>,
    versions: (u16, u16),
    nonce: [u8; 32],
    deadline: Instant,
    state: State,
}

#[derive(Debug)]
enum State {
    /// Connector, HELLO sent.
    AwaitWelcome,
    /// Acceptor, nothing received yet.
    AwaitHello,
    /// Acceptor, WELCOME sent.
    AwaitAuth {
        peer: PeerInfo,
        peer_nonce: [u8; 32],
    },
    Established,
    Failed,
}

impl State {
    fn name(&self) -> &'static str {
        match self {
            State::AwaitWelcome => "awaiting WELCOME",
            State::AwaitHello => "awaiting HELLO",
            State::AwaitAuth { .. } => "awaiting AUTH",
            State::Established => "established",
            State::Failed => "failed",
        }
    }
}

impl Handshake {
    /// Starts the connector's side: appends HELLO to `out`.
    pub fn connect(
        config: &HandshakeConfig,
        nonce: [u8; 32],
        now: Instant,
        out: &mut Vec<u8>,
    ) -> Self {
        let handshake = Self::new(config, nonce, now, State::AwaitWelcome);
        let hello = Hello {
            protocol_min: handshake.versions.0,
            protocol_max: handshake.versions.1,
            node: handshake.node,
            nonce,
            name: handshake.name.clone(),
        };
        encode(&Frame::Hello(hello), out);
        handshake
    }

    /// Starts the acceptor's side, which waits for HELLO.
    pub fn accept(config: &HandshakeConfig, nonce: [u8; 32], now: Instant) -> Self {
        Self::new(config, nonce, now, State::AwaitHello)
    }

    fn new(config: &HandshakeConfig, nonce: [u8; 32], now: Instant, state: State) -> Self {
        let secret = config.secret.as_deref().unwrap_or_default();
        Handshake {
            node: config.node,
            name: truncate_utf8(&config.name, NAME_MAX).to_owned(),
            key: Hmac::new_from_slice(&derive_key(secret)).expect("HMAC takes keys of any length"),
            versions: (*config.versions.start(), *config.versions.end()),
            nonce,
            deadline: now + config.timeout,
            state,
        }
    }

    /// Takes one received frame. Returns `Some(peer)` when this frame establishes the link. On a
    /// refusal it appends a REFUSE frame to `out` (to send before closing) and returns the error.
    ///
    /// A REFUSE received is [`Error::Refused`] in every state (the acceptor may refuse AUTH after
    /// the connector considers itself established). Any other frame once established or failed is
    /// [`Error::UnexpectedFrame`], with nothing sent and the state unchanged.
    pub fn on_frame(&mut self, frame: &Frame<'_>, out: &mut Vec<u8>) -> Result<Option<PeerInfo>> {
        if let Frame::Refuse(refuse) = frame {
            if !matches!(self.state, State::Established) {
                self.state = State::Failed;
            }
            return Err(Error::Refused {
                code: refuse.code as u16,
                reason: refuse.reason.clone(),
            });
        }
        if matches!(self.state, State::Established | State::Failed) {
            return Err(unexpected(&self.state, frame));
        }
        let result = match (std::mem::replace(&mut self.state, State::Failed), frame) {
            (State::AwaitHello, Frame::Hello(hello)) => self.on_hello(hello, out).map(|()| None),
            (State::AwaitWelcome, Frame::Welcome(welcome)) => {
                self.on_welcome(welcome, out).map(Some)
            }
            (State::AwaitAuth { peer, peer_nonce }, Frame::Auth(auth)) => self
                .on_auth(&peer, &peer_nonce, auth, out)
                .map(|()| Some(peer)),
            (state, _) => {
                refuse(
                    RefuseCode::Protocol,
                    "unexpected frame during handshake",
                    out,
                );
                Err(unexpected(&state, frame))
            }
        };
        if let Ok(Some(peer)) = &result {
            tracing::debug!(peer = %peer.node, name = %peer.name, version = peer.version, "handshake done");
            self.state = State::Established;
        }
        result
    }

    /// Acceptor: checks HELLO, sends WELCOME.
    fn on_hello(&mut self, hello: &Hello, out: &mut Vec<u8>) -> Result<()> {
        let (ours, theirs) = (self.versions, (hello.protocol_min, hello.protocol_max));
        let version = ours.1.min(theirs.1);
        if version < ours.0.max(theirs.0) {
            refuse(RefuseCode::Version, "no common protocol version", out);
            return Err(Error::VersionMismatch { ours, theirs });
        }
        self.check_not_self(hello.node, out)?;
        let mac = self.mac(
            WELCOME_DOMAIN,
            &hello.nonce,
            &self.nonce,
            hello.node,
            self.node,
        );
        let welcome = Welcome {
            protocol: version,
            node: self.node,
            nonce: self.nonce,
            mac: mac.finalize().into_bytes().into(),
            name: self.name.clone(),
        };
        encode(&Frame::Welcome(welcome), out);
        let peer = PeerInfo {
            node: hello.node,
            name: hello.name.clone(),
            version,
        };
        self.state = State::AwaitAuth {
            peer,
            peer_nonce: hello.nonce,
        };
        Ok(())
    }

    /// Connector: checks WELCOME, sends AUTH.
    fn on_welcome(&mut self, welcome: &Welcome, out: &mut Vec<u8>) -> Result<PeerInfo> {
        let mac = self.mac(
            WELCOME_DOMAIN,
            &self.nonce,
            &welcome.nonce,
            self.node,
            welcome.node,
        );
        if mac.verify_slice(&welcome.mac).is_err() {
            refuse(RefuseCode::Auth, "handshake MAC mismatch", out);
            return Err(auth_failed(&welcome.name, welcome.node));
        }
        let version = welcome.protocol;
        if version < self.versions.0 || version > self.versions.1 {
            refuse(RefuseCode::Version, "protocol version not offered", out);
            return Err(Error::VersionMismatch {
                ours: self.versions,
                theirs: (version, version),
            });
        }
        self.check_not_self(welcome.node, out)?;
        let mac = self.mac(
            AUTH_DOMAIN,
            &welcome.nonce,
            &self.nonce,
            welcome.node,
            self.node,
        );
        let auth = Auth {
            mac: mac.finalize().into_bytes().into(),
        };
        encode(&Frame::Auth(auth), out);
        Ok(PeerInfo {
            node: welcome.node,
            name: welcome.name.clone(),
            version,
        })
    }

    /// Acceptor: checks AUTH.
    fn on_auth(
        &self,
        peer: &PeerInfo,
        peer_nonce: &[u8; 32],
        auth: &Auth,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let mac = self.mac(AUTH_DOMAIN, &self.nonce, peer_nonce, self.node, peer.node);
        if mac.verify_slice(&auth.mac).is_err() {
            refuse(RefuseCode::Auth, "handshake MAC mismatch", out);
            return Err(auth_failed(&peer.name, peer.node));
        }
        Ok(())
    }

    fn check_not_self(&self, peer: Uuid, out: &mut Vec<u8>) -> Result<()> {
        if peer == self.node {
            refuse(RefuseCode::DuplicateNode, "peer has our node uuid", out);
            return Err(Error::DuplicateNode { node: peer });
        }
        Ok(())
    }

    /// HMAC(secret, domain ‖ nonce_1 ‖ nonce_2 ‖ node_1 ‖ node_2), ready to finalize or verify.
    fn mac(
        &self,
        domain: &[u8],
        nonce_1: &[u8; 32],
        nonce_2: &[u8; 32],
        node_1: Uuid,
        node_2: Uuid,
    ) -> Hmac<Sha256> {
        let mut mac = self.key.clone();
        for part in [
            domain,
            nonce_1,
            nonce_2,
            node_1.as_bytes(),
            node_2.as_bytes(),
        ] {
            mac.update(part);
        }
        mac
    }

    /// When the handshake must be done by: creation time plus the configured timeout.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// [`Error::HandshakeTimeout`] if `now` is past the deadline and the link is not established.
    pub fn check_deadline(&self, now: Instant) -> Result<()> {
        if now >= self.deadline && !self.is_established() {
            return Err(Error::HandshakeTimeout);
        }
        Ok(())
    }

    /// Whether the handshake has succeeded.
    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established)
    }
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handshake")
            .field("node", &self.node)
            .field("name", &self.name)
            .field("versions", &self.versions)
            .field("deadline", &self.deadline)
            .field("state", &self.state.name())
            .finish_non_exhaustive()
    }
}

fn refuse(code: RefuseCode, reason: &str, out: &mut Vec<u8>) {
    encode(&Frame::Refuse(Refuse::new(code, reason)), out);
}

fn unexpected(state: &State, frame: &Frame<'_>) -> Error {
    Error::UnexpectedFrame {
        state: state.name(),
        frame: frame.kind(),
    }
}

fn auth_failed(name: &str, node: Uuid) -> Error {
    Error::AuthFailed {
        peer: format!("{name} ({node})"),
    }
}

/// The HMAC key for a cluster secret; see the module docs.
pub fn derive_key(secret: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    let mut hash = Sha256::new();
    hash.update(b"pagemesh/cluster-secret\0");
    hash.update(secret);
    hash.finalize().into()
}
