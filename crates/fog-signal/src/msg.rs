//! The signaling frames: one JSON object per WebSocket text frame, tagged by `"type"`.
//!
//! [`ClientMsg`] travels from a node to the server, [`ServerMsg`] from the server to a node.
//! `docs/signaling.md` shows each with an example. Decoding is [`ClientMsg::decode`] /
//! [`ServerMsg::decode`], which tell malformed JSON, an unknown `"type"` and a known type with
//! bad fields apart ([`DecodeError`]); encoding never fails.
//!
//! Byte strings (nonces, signatures) are lowercase hex; peer ids are [`PeerId`]'s text form;
//! socket addresses are `"203.0.113.7:4000"` / `"[2001:db8::1]:4000"`.

use std::fmt;
use std::net::SocketAddr;

use fog_core::nat;
use serde::{Deserialize, Serialize};

use crate::identity::PeerId;

/// The protocol version this crate speaks, sent in `hello` and `challenge`.
pub const PROTOCOL_VERSION: u32 = 1;

/// The domain-separation label that starts every auth transcript.
pub const AUTH_DOMAIN: &[u8] = b"fogconnect-signal-auth-v1\0";

/// A 32-byte random value, hex in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nonce(pub [u8; 32]);

/// An Ed25519 signature, hex in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sig(pub [u8; 64]);

/// An X25519 public key (RFC 7748), hex in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExchangeKey(pub [u8; 32]);

/// The SHA-256 of a DER certificate (RFC 8122 §5's form), hex in JSON: the QUIC certificate a
/// node presents, signed into its descriptions so the handshake can be held to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CertFingerprint(pub [u8; 32]);

/// A session chosen by the server for one offer/answer exchange, hex in JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(&self.0))
    }
}

macro_rules! hex_serde {
    ($t:ty, $n:expr) => {
        impl Serialize for $t {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&hex::encode(&self.0))
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                let mut out = [0u8; $n];
                if hex::decode_into(&s, &mut out) {
                    Ok(Self(out))
                } else {
                    Err(serde::de::Error::custom(concat!(
                        "expected ",
                        stringify!($n),
                        " bytes as hex"
                    )))
                }
            }
        }
    };
}
hex_serde!(Nonce, 32);
hex_serde!(Sig, 64);
hex_serde!(SessionId, 16);
hex_serde!(ExchangeKey, 32);
hex_serde!(CertFingerprint, 32);

/// The bytes a client signs to authenticate (see `docs/signaling.md`, "The auth transcript").
///
/// Every variable-length field is length-prefixed, so no two different inputs give the same
/// bytes. The realm is the name the client dialled and the server key is the one in the challenge;
/// both sides compute it independently, so a signature made for one server is useless at another.
pub fn auth_transcript(
    realm: &str,
    server: &PeerId,
    client_nonce: &Nonce,
    server_nonce: &Nonce,
    peer: &PeerId,
    alias: Option<&str>,
) -> Vec<u8> {
    let mut t = Vec::with_capacity(AUTH_DOMAIN.len() + 200);
    t.extend_from_slice(AUTH_DOMAIN);
    for field in [
        realm.as_bytes(),
        server.as_bytes(),
        &client_nonce.0,
        &server_nonce.0,
        peer.as_bytes(),
        alias.unwrap_or("").as_bytes(),
    ] {
        t.extend_from_slice(&(field.len() as u32).to_be_bytes());
        t.extend_from_slice(field);
    }
    t
}

/// The longest `reason` a `close` may carry, in bytes: enough for a sentence, small enough that
/// a close never comes near the frame limit.
pub const MAX_CLOSE_REASON: usize = 256;

/// A request number chosen by the client, echoed in the reply (and in an error about it).
pub type RequestId = u32;

/// A frame from a node to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMsg {
    /// Opens the handshake.
    Hello {
        /// The highest protocol version the client speaks.
        version: u32,
        /// Fresh random bytes; never reused.
        nonce: Nonce,
    },
    /// Answers the challenge: proves possession of `peer`'s secret key.
    Auth {
        /// The identity being proved.
        peer: PeerId,
        /// The server nonce being answered (echoed so a stale answer is told apart).
        challenge: Nonce,
        /// Signature of [`auth_transcript`].
        signature: Sig,
        /// An alias to bind to this key at once, covered by the signature.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alias: Option<String>,
    },
    /// Binds another alias to the authenticated key.
    Register {
        /// Request number.
        id: RequestId,
        /// The alias.
        alias: String,
    },
    /// Asks whether a peer is online. Never answered with addresses.
    Lookup {
        /// Request number.
        id: RequestId,
        /// A peer id's text form or an alias.
        target: String,
    },
    /// Asks to connect to `to`: the server assigns a session and forwards the description.
    Offer {
        /// Request number; the reply is `offer_sent` with the session.
        id: RequestId,
        /// The peer to connect to.
        to: PeerId,
        /// The offerer's candidates, NAT behaviour, transports and credentials.
        description: Description,
    },
    /// Accepts an offer.
    Answer {
        /// The session from the offer.
        session: SessionId,
        /// The answerer's description.
        description: Description,
    },
    /// A candidate found after the offer or answer, or `null` for "no more".
    Candidate {
        /// The session.
        session: SessionId,
        /// The new candidate.
        candidate: Option<Candidate>,
        /// The sender's signature over the candidate (see `docs/signaling.md`, "Trust");
        /// forwarded untouched.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<Sig>,
    },
    /// The sender's NAT behaviour changed after its offer or answer (its discovery was still
    /// running then); forwarded untouched like a candidate.
    Nat {
        /// The session.
        session: SessionId,
        /// The behaviour now.
        nat: NatBehaviour,
        /// The sender's signature over it (see `docs/signaling.md`, "Trust").
        signature: Sig,
    },
    /// Asks for short-lived relay (TURN) credentials.
    RelayRequest {
        /// Request number.
        id: RequestId,
    },
    /// A datagram for the other peer of an answered session, carried by the signaling server
    /// itself: the relay of last resort for a node whose network blocks UDP (see
    /// `docs/signaling.md`, "Relay over signaling").
    Relay {
        /// The session.
        session: SessionId,
        /// The datagram, base64 (standard alphabet, padded).
        data: String,
    },
    /// Ends a session (either peer, answered or not): the server forgets it and tells the other
    /// peer with `session_closed` carrying `code` and `reason`. The answering peer refuses an
    /// offer this way.
    Close {
        /// The session.
        session: SessionId,
        /// The application's code, for programs (0: no error).
        code: u32,
        /// Why, for people (at most [`MAX_CLOSE_REASON`] bytes).
        reason: String,
    },
    /// Measures the round trip; the server answers `pong` at once.
    Ping {
        /// Echoed in the pong.
        id: u32,
    },
    /// Answers the server's `ping`.
    Pong {
        /// The server's ping id.
        id: u32,
    },
}

/// A frame from the server to a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMsg {
    /// Answers `hello`.
    Challenge {
        /// The version the server will speak on this connection.
        version: u32,
        /// Fresh random bytes, valid for one `auth` on this connection until the auth timeout.
        nonce: Nonce,
        /// The server's own identity, part of the transcript.
        server: PeerId,
        /// The server's realm (informational: the client signs the realm it dialled).
        realm: String,
    },
    /// The handshake succeeded.
    Welcome {
        /// The authenticated identity.
        peer: PeerId,
        /// The alias claimed in `auth`, if it was bound.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        alias: Option<String>,
        /// The rate limit the server holds this connection's frames to, so that the client
        /// can pace itself under it (absent from servers that do not say).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rate: Option<Rate>,
    },
    /// An alias is now bound to the key.
    Registered {
        /// Request number.
        id: RequestId,
        /// The alias, normalised to lowercase.
        alias: String,
    },
    /// Answers `lookup`.
    LookupResult {
        /// Request number.
        id: RequestId,
        /// The key behind the target, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        peer: Option<PeerId>,
        /// Whether that key is connected to the server now.
        online: bool,
    },
    /// The offer was forwarded; the session is now open.
    OfferSent {
        /// Request number of the offer.
        id: RequestId,
        /// The session the server assigned.
        session: SessionId,
    },
    /// Another peer asks to connect.
    Offer {
        /// The session to answer.
        session: SessionId,
        /// Who asks (authenticated by the server).
        from: PeerId,
        /// Their description.
        description: Description,
    },
    /// The target accepted.
    Answer {
        /// The session.
        session: SessionId,
        /// Who answered.
        from: PeerId,
        /// Their description.
        description: Description,
    },
    /// The other side of a session has a new NAT behaviour.
    Nat {
        /// The session.
        session: SessionId,
        /// Its behaviour now.
        nat: NatBehaviour,
        /// The other peer's signature over it.
        signature: Sig,
    },
    /// A trickled candidate from the other side of a session.
    Candidate {
        /// The session.
        session: SessionId,
        /// The candidate, or `null` for "no more".
        candidate: Option<Candidate>,
        /// The other peer's signature over it, if it signed it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        signature: Option<Sig>,
    },
    /// A datagram from the other peer of a session, carried by the server.
    Relay {
        /// The session.
        session: SessionId,
        /// The datagram, base64.
        data: String,
    },
    /// Start punching at a common instant (see `docs/signaling.md`, "Punch sync").
    Punch {
        /// The session.
        session: SessionId,
        /// Start this many milliseconds after receiving this frame.
        delay_ms: u32,
        /// The start instant as an offset from the server's clock when it sent the frames.
        at_ms: u32,
        /// The server's estimate of the round trip to the receiver.
        rtt_ms: u32,
        /// The server's estimate of the round trip to the other peer.
        peer_rtt_ms: u32,
    },
    /// The session ended: the other peer closed it (`code` is then its code) or left, or the
    /// offer went unanswered.
    SessionClosed {
        /// The session.
        session: SessionId,
        /// Why.
        reason: String,
        /// The other peer's code when it closed the session with `close`; absent when the
        /// server ended it (a peer left, the offer went unanswered).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        code: Option<u32>,
    },
    /// Relay credentials in coturn's `use-auth-secret` scheme.
    RelayCredentials {
        /// Request number.
        id: RequestId,
        /// `<expiry unix seconds>:<peer id>`.
        username: String,
        /// Base64 of HMAC-SHA1(secret, username).
        password: String,
        /// Seconds until the credentials expire.
        ttl_s: u32,
        /// The relay addresses (`turn:` URLs).
        urls: Vec<String>,
    },
    /// Answers a client's `ping`.
    Pong {
        /// The client's ping id.
        id: u32,
    },
    /// Measures the round trip; answer with `pong`.
    Ping {
        /// Echo it.
        id: u32,
    },
    /// Something went wrong; see [`ErrorCode`].
    Error {
        /// The stable numeric code.
        code: u16,
        /// The code's name, for people.
        name: String,
        /// The request this is about, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<RequestId>,
        /// Human-readable detail; do not parse.
        message: String,
    },
}

/// What one side tells the other to start a connection: everything issue 5's connectivity needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Description {
    /// Candidates known so far; more may trickle.
    pub candidates: Vec<Candidate>,
    /// The sender's discovered NAT behaviour, if discovery finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat: Option<NatBehaviour>,
    /// Transports offered, most preferred first (an answer lists the one chosen first).
    pub transports: Vec<Transport>,
    /// Credentials for the connectivity checks of this session.
    pub credentials: Credentials,
    /// The application's service number (what the connection is for).
    pub service: u16,
    /// The sender's ephemeral key exchange and its signature over the description: what makes
    /// the session end-to-end authenticated and sealed (see `docs/signaling.md`, "Trust").
    /// The server forwards it untouched; nodes refuse a description without a valid one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<Seal>,
    /// The fingerprint of the certificate the sender presents on QUIC connections, when it
    /// offers or accepts [`Transport::Quic`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<CertFingerprint>,
    /// The SHA-256 fingerprint of the DTLS certificate the sender presents on WebRTC
    /// connections, when it offers or accepts [`Transport::Rtc`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtc: Option<CertFingerprint>,
}

/// A description's key exchange and signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seal {
    /// The sender's ephemeral X25519 public key for this session.
    pub key: ExchangeKey,
    /// The sender's Ed25519 signature over the description's transcript.
    pub signature: Sig,
}

/// A server's limit on one connection's frames: a token bucket of `burst` frames refilled at
/// `frames_per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rate {
    /// Sustained frames per second.
    pub frames_per_second: u32,
    /// Frames allowed at once after a quiet spell.
    pub burst: u32,
}

/// Per-session connectivity-check credentials (RFC 8445 §5.3 ufrag and password).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// Username fragment (4–256 characters).
    pub ufrag: String,
    /// Password (22–256 characters).
    pub pwd: String,
}

/// A transport address where the sender may be reachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    /// How it was found.
    pub kind: CandidateKind,
    /// The address.
    pub addr: SocketAddr,
    /// RFC 8445 §5.1.2 priority.
    pub priority: u32,
    /// The base or related address (a server-reflexive candidate's host address), if shared.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub related: Option<SocketAddr>,
}

/// How a candidate was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CandidateKind {
    /// A local interface address.
    Host,
    /// Server-reflexive: the mapping a STUN server saw.
    Srflx,
    /// Peer-reflexive: the mapping a peer saw.
    Prflx,
    /// Predicted from the NAT's port pattern.
    Predicted,
    /// A TURN relay address.
    Relay,
    /// A port the sender's router forwards to it (PCP, NAT-PMP or UPnP IGD), sent only once a
    /// probe from outside came through it: the receiver may count the sender as directly
    /// reachable there (`fog_ice::strategy::with_mapping`). Peers and servers from before
    /// this kind refuse a frame that names it.
    Mapped,
}

/// A transport the sender can run. Unknown names from newer peers are kept as [`Transport::Other`]
/// rather than failing the whole description.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum Transport {
    /// `datagram`: the node's own sealed, unreliable datagrams, no transport on top.
    Datagram,
    /// `kcp`
    Kcp,
    /// `utp`
    Utp,
    /// `quic`
    Quic,
    /// `sctp`
    Sctp,
    /// `rtc` (WebRTC data channels)
    Rtc,
    /// `browser`: WebRTC data channels with a web browser, ICE and DTLS raw on the answering
    /// node's socket (the browser cannot seal datagrams); the offer's `rtc` is the browser's
    /// DTLS fingerprint and its `credentials` are its ICE ufrag and password (`docs/browser.md`).
    Browser,
    /// Any other name.
    Other(String),
}

impl From<String> for Transport {
    fn from(s: String) -> Self {
        match s.as_str() {
            "datagram" => Transport::Datagram,
            "kcp" => Transport::Kcp,
            "utp" => Transport::Utp,
            "quic" => Transport::Quic,
            "sctp" => Transport::Sctp,
            "rtc" => Transport::Rtc,
            "browser" => Transport::Browser,
            _ => Transport::Other(s),
        }
    }
}

impl From<Transport> for String {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Datagram => "datagram".into(),
            Transport::Kcp => "kcp".into(),
            Transport::Utp => "utp".into(),
            Transport::Quic => "quic".into(),
            Transport::Sctp => "sctp".into(),
            Transport::Rtc => "rtc".into(),
            Transport::Browser => "browser".into(),
            Transport::Other(s) => s,
        }
    }
}

/// The JSON mirror of [`fog_core::nat::Behaviour`] (fog-core stays free of serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NatBehaviour {
    /// [`nat::Behaviour::Open`]
    Open,
    /// [`nat::Behaviour::Firewall`]
    Firewall {
        /// Inbound filtering.
        filtering: Filtering,
    },
    /// [`nat::Behaviour::Nat`]
    Nat {
        /// Mapping behaviour.
        mapping: Mapping,
        /// Filtering behaviour.
        filtering: Filtering,
        /// Port pattern.
        ports: PortPattern,
        /// Hairpinning.
        hairpinning: bool,
    },
    /// [`nat::Behaviour::UdpBlocked`]
    UdpBlocked,
}

/// The JSON mirror of [`nat::Mapping`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mapping {
    /// Endpoint-independent.
    EndpointIndependent,
    /// Address-dependent.
    AddressDependent,
    /// Address-and-port-dependent.
    AddressAndPortDependent,
}

/// The JSON mirror of [`nat::Filtering`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Filtering {
    /// Endpoint-independent.
    EndpointIndependent,
    /// Address-dependent.
    AddressDependent,
    /// Address-and-port-dependent.
    AddressAndPortDependent,
}

/// The JSON mirror of [`nat::PortPattern`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PortPattern {
    /// Preserved.
    Preserved,
    /// Sequential by `delta`.
    Sequential {
        /// The step.
        delta: i32,
    },
    /// Random.
    Random,
}

macro_rules! mirror {
    ($ours:ident, $theirs:path, $($v:ident),*) => {
        impl From<$theirs> for $ours {
            fn from(x: $theirs) -> Self {
                use $theirs as T;
                match x { $(T::$v => $ours::$v),* }
            }
        }
        impl From<$ours> for $theirs {
            fn from(x: $ours) -> Self {
                use $theirs as T;
                match x { $($ours::$v => T::$v),* }
            }
        }
    };
}
mirror!(
    Mapping,
    nat::Mapping,
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent
);
mirror!(
    Filtering,
    nat::Filtering,
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent
);

impl From<nat::PortPattern> for PortPattern {
    fn from(p: nat::PortPattern) -> Self {
        match p {
            nat::PortPattern::Preserved => PortPattern::Preserved,
            nat::PortPattern::Sequential { delta } => PortPattern::Sequential { delta },
            nat::PortPattern::Random => PortPattern::Random,
        }
    }
}

impl From<PortPattern> for nat::PortPattern {
    fn from(p: PortPattern) -> Self {
        match p {
            PortPattern::Preserved => nat::PortPattern::Preserved,
            PortPattern::Sequential { delta } => nat::PortPattern::Sequential { delta },
            PortPattern::Random => nat::PortPattern::Random,
        }
    }
}

impl From<nat::Behaviour> for NatBehaviour {
    fn from(b: nat::Behaviour) -> Self {
        match b {
            nat::Behaviour::Open => NatBehaviour::Open,
            nat::Behaviour::Firewall { filtering } => NatBehaviour::Firewall {
                filtering: filtering.into(),
            },
            nat::Behaviour::Nat {
                mapping,
                filtering,
                ports,
                hairpinning,
            } => NatBehaviour::Nat {
                mapping: mapping.into(),
                filtering: filtering.into(),
                ports: ports.into(),
                hairpinning,
            },
            nat::Behaviour::UdpBlocked => NatBehaviour::UdpBlocked,
        }
    }
}

impl From<NatBehaviour> for nat::Behaviour {
    fn from(b: NatBehaviour) -> Self {
        match b {
            NatBehaviour::Open => nat::Behaviour::Open,
            NatBehaviour::Firewall { filtering } => nat::Behaviour::Firewall {
                filtering: filtering.into(),
            },
            NatBehaviour::Nat {
                mapping,
                filtering,
                ports,
                hairpinning,
            } => nat::Behaviour::Nat {
                mapping: mapping.into(),
                filtering: filtering.into(),
                ports: ports.into(),
                hairpinning,
            },
            NatBehaviour::UdpBlocked => nat::Behaviour::UdpBlocked,
        }
    }
}

/// The stable error codes. Numbers never change meaning; new codes get new numbers.
///
/// 1xxx: the frame itself; 2xxx: identity and authentication; 3xxx: limits; 4xxx: routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ErrorCode {
    /// 1001: not JSON, or not a JSON object.
    BadJson,
    /// 1002: a `"type"` this server does not know, or none.
    UnknownMessage,
    /// 1003: a known type with missing, extra or ill-typed fields.
    BadMessage,
    /// 1004: the frame exceeds the size limit (the connection is closed).
    TooLarge,
    /// 1005: no common protocol version (the connection is closed).
    VersionUnsupported,
    /// 1006: a valid message at the wrong time (a second `hello`, `auth` before `hello`, ...).
    UnexpectedMessage,
    /// 2001: the message needs an authenticated connection.
    NotAuthenticated,
    /// 2002: the signature does not verify (the connection is closed).
    BadSignature,
    /// 2003: a reused client nonce or a stale challenge (the connection is closed).
    Replayed,
    /// 2004: no successful `auth` within the auth timeout (the connection is closed).
    AuthTimeout,
    /// 2005: the alias is bound to another key.
    AliasTaken,
    /// 2006: the alias is not 1–64 characters of `A–Z a–z 0–9 . _ : -`.
    BadAlias,
    /// 2007: this key already has the maximum number of aliases.
    TooManyAliases,
    /// 2008: the client refused the server's identity or realm (client-side only).
    ServerRejected,
    /// 3001: too many frames per second.
    RateLimited,
    /// 3002: the server has no room for another connection or peer (the connection is closed).
    ServerFull,
    /// 3003: too many unanswered offers to or from this peer.
    TooManyPending,
    /// 3004: the server has no relay configured.
    RelayUnavailable,
    /// 3005: a peer of the offer already takes part in the most sessions the server allows.
    TooManySessions,
    /// 4001: no authenticated peer with that id or alias is online.
    UnknownPeer,
    /// 4002: no such session, or not one of its two peers.
    UnknownSession,
}

impl ErrorCode {
    /// Every code, for tables and tests.
    pub const ALL: [ErrorCode; 21] = [
        ErrorCode::BadJson,
        ErrorCode::UnknownMessage,
        ErrorCode::BadMessage,
        ErrorCode::TooLarge,
        ErrorCode::VersionUnsupported,
        ErrorCode::UnexpectedMessage,
        ErrorCode::NotAuthenticated,
        ErrorCode::BadSignature,
        ErrorCode::Replayed,
        ErrorCode::AuthTimeout,
        ErrorCode::AliasTaken,
        ErrorCode::BadAlias,
        ErrorCode::TooManyAliases,
        ErrorCode::ServerRejected,
        ErrorCode::RateLimited,
        ErrorCode::ServerFull,
        ErrorCode::TooManyPending,
        ErrorCode::RelayUnavailable,
        ErrorCode::TooManySessions,
        ErrorCode::UnknownPeer,
        ErrorCode::UnknownSession,
    ];

    /// The stable number.
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::BadJson => 1001,
            ErrorCode::UnknownMessage => 1002,
            ErrorCode::BadMessage => 1003,
            ErrorCode::TooLarge => 1004,
            ErrorCode::VersionUnsupported => 1005,
            ErrorCode::UnexpectedMessage => 1006,
            ErrorCode::NotAuthenticated => 2001,
            ErrorCode::BadSignature => 2002,
            ErrorCode::Replayed => 2003,
            ErrorCode::AuthTimeout => 2004,
            ErrorCode::AliasTaken => 2005,
            ErrorCode::BadAlias => 2006,
            ErrorCode::TooManyAliases => 2007,
            ErrorCode::ServerRejected => 2008,
            ErrorCode::RateLimited => 3001,
            ErrorCode::ServerFull => 3002,
            ErrorCode::TooManyPending => 3003,
            ErrorCode::RelayUnavailable => 3004,
            ErrorCode::TooManySessions => 3005,
            ErrorCode::UnknownPeer => 4001,
            ErrorCode::UnknownSession => 4002,
        }
    }

    /// The stable snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::UnknownMessage => "unknown_message",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::VersionUnsupported => "version_unsupported",
            ErrorCode::UnexpectedMessage => "unexpected_message",
            ErrorCode::NotAuthenticated => "not_authenticated",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::Replayed => "replayed",
            ErrorCode::AuthTimeout => "auth_timeout",
            ErrorCode::AliasTaken => "alias_taken",
            ErrorCode::BadAlias => "bad_alias",
            ErrorCode::TooManyAliases => "too_many_aliases",
            ErrorCode::ServerRejected => "server_rejected",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::ServerFull => "server_full",
            ErrorCode::TooManyPending => "too_many_pending",
            ErrorCode::RelayUnavailable => "relay_unavailable",
            ErrorCode::TooManySessions => "too_many_sessions",
            ErrorCode::UnknownPeer => "unknown_peer",
            ErrorCode::UnknownSession => "unknown_session",
        }
    }

    /// The code with this number.
    pub fn from_code(code: u16) -> Option<ErrorCode> {
        ErrorCode::ALL.into_iter().find(|e| e.code() == code)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// Why a frame did not decode. Maps onto the first three [`ErrorCode`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a JSON object.
    BadJson,
    /// No `"type"`, or one this side does not know.
    UnknownMessage,
    /// A known type whose fields are wrong; the text says which.
    BadMessage(String),
}

impl DecodeError {
    /// The error code to answer with.
    pub fn code(&self) -> ErrorCode {
        match self {
            DecodeError::BadJson => ErrorCode::BadJson,
            DecodeError::UnknownMessage => ErrorCode::UnknownMessage,
            DecodeError::BadMessage(_) => ErrorCode::BadMessage,
        }
    }
}

const CLIENT_TYPES: &[&str] = &[
    "hello",
    "auth",
    "register",
    "lookup",
    "offer",
    "answer",
    "candidate",
    "relay_request",
    "ping",
    "pong",
];

const SERVER_TYPES: &[&str] = &[
    "challenge",
    "welcome",
    "registered",
    "lookup_result",
    "offer_sent",
    "offer",
    "answer",
    "candidate",
    "punch",
    "session_closed",
    "relay_credentials",
    "pong",
    "ping",
    "error",
];

fn decode<T: serde::de::DeserializeOwned>(frame: &str, known: &[&str]) -> Result<T, DecodeError> {
    // Objects only: serde would also accept a sequence for a tagged enum.
    if !frame.trim_start().starts_with('{') {
        return Err(DecodeError::BadJson);
    }
    match serde_json::from_str::<T>(frame) {
        Ok(m) => Ok(m),
        Err(e) => {
            // The slow path, only for bad frames: tell an unknown type from bad fields.
            let Ok(serde_json::Value::Object(map)) = serde_json::from_str(frame) else {
                return Err(DecodeError::BadJson);
            };
            match map.get("type").and_then(serde_json::Value::as_str) {
                Some(k) if known.contains(&k) => Err(DecodeError::BadMessage(e.to_string())),
                _ => Err(DecodeError::UnknownMessage),
            }
        }
    }
}

impl ClientMsg {
    /// Parses a frame from a client.
    pub fn decode(frame: &str) -> Result<Self, DecodeError> {
        decode(frame, CLIENT_TYPES)
    }

    /// The frame text.
    pub fn encode(&self) -> String {
        // Serialising these types cannot fail: string keys, no non-finite floats.
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl ServerMsg {
    /// Parses a frame from the server.
    pub fn decode(frame: &str) -> Result<Self, DecodeError> {
        decode(frame, SERVER_TYPES)
    }

    /// The frame text.
    pub fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// An error frame.
    pub fn error(code: ErrorCode, id: Option<RequestId>, message: impl Into<String>) -> Self {
        ServerMsg::Error {
            code: code.code(),
            name: code.name().into(),
            id,
            message: message.into(),
        }
    }
}

/// Lowercase hex without a dependency.
pub(crate) mod hex {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";

    pub(crate) fn encode(bytes: &[u8]) -> String {
        let mut s = String::with_capacity(bytes.len() * 2);
        for b in bytes {
            s.push(char::from(DIGITS[usize::from(b >> 4)]));
            s.push(char::from(DIGITS[usize::from(b & 15)]));
        }
        s
    }

    /// Fills `out` from exactly `2 * out.len()` hex digits (either case); false otherwise.
    pub(crate) fn decode_into(s: &str, out: &mut [u8]) -> bool {
        let s = s.as_bytes();
        if s.len() != out.len() * 2 {
            return false;
        }
        for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => *o = (h << 4) | l,
                _ => return false,
            }
        }
        true
    }

    fn digit(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            b'A'..=b'F' => Some(c - b'A' + 10),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn description() -> Description {
        Description {
            candidates: vec![
                Candidate {
                    kind: CandidateKind::Host,
                    addr: "192.168.1.20:4000".parse().unwrap(),
                    priority: 2_130_706_431,
                    related: None,
                },
                Candidate {
                    kind: CandidateKind::Srflx,
                    addr: "[2001:db8::7]:61000".parse().unwrap(),
                    priority: 1_694_498_815,
                    related: Some("192.168.1.20:4000".parse().unwrap()),
                },
            ],
            nat: Some(
                nat::Behaviour::Nat {
                    mapping: nat::Mapping::AddressAndPortDependent,
                    filtering: nat::Filtering::AddressDependent,
                    ports: nat::PortPattern::Sequential { delta: 2 },
                    hairpinning: false,
                }
                .into(),
            ),
            transports: vec![Transport::Quic, Transport::Other("warp".into())],
            credentials: Credentials {
                ufrag: "abcd".into(),
                pwd: "0123456789abcdefghijkl".into(),
            },
            service: 7,
            seal: None,
            quic: None,
            rtc: None,
        }
    }

    #[test]
    fn literal_frames() {
        let m = ClientMsg::Hello {
            version: 1,
            nonce: Nonce([0xab; 32]),
        };
        assert_eq!(
            m.encode(),
            format!(
                r#"{{"type":"hello","version":1,"nonce":"{}"}}"#,
                "ab".repeat(32)
            )
        );
        let e = ServerMsg::error(ErrorCode::AliasTaken, Some(3), "x");
        assert_eq!(
            e.encode(),
            r#"{"type":"error","code":2005,"name":"alias_taken","id":3,"message":"x"}"#
        );
        let c = Candidate {
            kind: CandidateKind::Predicted,
            addr: "198.51.100.9:40002".parse().unwrap(),
            priority: 5,
            related: None,
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"kind":"predicted","addr":"198.51.100.9:40002","priority":5}"#
        );
    }

    #[test]
    fn description_round_trip_and_nat_mirror() {
        let d = description();
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains(r#""nat":{"kind":"nat","mapping":"address_and_port_dependent","filtering":"address_dependent","ports":{"kind":"sequential","delta":2},"hairpinning":false}"#), "{json}");
        assert!(json.contains(r#""transports":["quic","warp"]"#));
        assert_eq!(serde_json::from_str::<Description>(&json).unwrap(), d);
        for b in [
            nat::Behaviour::Open,
            nat::Behaviour::UdpBlocked,
            nat::Behaviour::Firewall {
                filtering: nat::Filtering::AddressAndPortDependent,
            },
        ] {
            assert_eq!(nat::Behaviour::from(NatBehaviour::from(b)), b);
        }
    }

    #[test]
    fn decode_errors_are_classified() {
        assert_eq!(ClientMsg::decode("{"), Err(DecodeError::BadJson));
        assert_eq!(ClientMsg::decode("[1]"), Err(DecodeError::BadJson));
        assert_eq!(ClientMsg::decode("{}"), Err(DecodeError::UnknownMessage));
        assert_eq!(
            ClientMsg::decode(r#"{"type":"teleport"}"#),
            Err(DecodeError::UnknownMessage)
        );
        assert_eq!(
            ClientMsg::decode(r#"{"type":7}"#),
            Err(DecodeError::UnknownMessage)
        );
        assert_eq!(
            ClientMsg::decode(r#"["ping",1]"#),
            Err(DecodeError::BadJson)
        );
        assert!(matches!(
            ClientMsg::decode(r#"{"type":"ping"}"#),
            Err(DecodeError::BadMessage(_))
        ));
        // Unknown fields are ignored (the versioning rule in docs/signaling.md).
        assert_eq!(
            ClientMsg::decode(r#"{"type":"ping","id":1,"extra":2}"#),
            Ok(ClientMsg::Ping { id: 1 })
        );
        assert_eq!(
            ClientMsg::decode(r#"{"type":"ping","id":1}"#),
            Ok(ClientMsg::Ping { id: 1 })
        );
    }

    #[test]
    fn error_codes_are_unique_and_stable() {
        let mut codes: Vec<u16> = ErrorCode::ALL.iter().map(|e| e.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), ErrorCode::ALL.len());
        for e in ErrorCode::ALL {
            assert_eq!(ErrorCode::from_code(e.code()), Some(e));
        }
    }

    #[test]
    fn transcript_is_length_prefixed() {
        let p = PeerId::from_bytes([1; 32]);
        let n = Nonce([2; 32]);
        let a = auth_transcript("ab", &p, &n, &n, &p, Some("c"));
        let b = auth_transcript("a", &p, &n, &n, &p, Some("bc"));
        assert_ne!(a, b);
        assert!(a.starts_with(AUTH_DOMAIN));
    }
}
