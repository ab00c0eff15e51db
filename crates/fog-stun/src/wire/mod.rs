//! STUN messages: RFC 5389 with the RFC 5780 behaviour-discovery attributes and the RFC 3489
//! attributes classic servers still send.
//!
//! Three layers, each usable alone:
//!
//! - [`Packet`]: a zero-copy view of the header and the attribute TLVs;
//!   [`Packet::new_checked`] is the only length check, after which nothing panics;
//! - [`Message`]: the `Repr` of any STUN message, with every attribute FogConnect understands
//!   typed in [`Attributes`]; [`Message::decode`] and [`Message::encode`];
//! - [`BindingRequest`] and [`BindingResponse`]: what discovery, transactions and the server
//!   build and read.
//!
//! Attribute values are encoded and decoded by `stun_codec` (with the attributes it lacks
//! written in this module); nothing outside `wire` sees a `stun_codec` type.
//!
//! # Classic (RFC 3489) messages
//!
//! RFC 3489 had no magic cookie: the four bytes at offset 4 were the start of a 128-bit
//! transaction ID. A message whose cookie field is not 0x2112A442 decodes as
//! [`Cookie::Classic`] carrying those four bytes, so that a response can echo the whole 128-bit
//! ID (RFC 5389 §12.2). Such a message is handed to `stun_codec` with the cookie put in place
//! (its decoder insists on it) and encoded the same way, the four bytes restored afterwards.
//! The other packet checks (length, alignment, two zero bits) apply to both.
//!
//! # MESSAGE-INTEGRITY and FINGERPRINT
//!
//! Both are checked and written on the datagram bytes, not on a re-encoding (see `trailer`).
//! [`Message::decode`] rejects a wrong FINGERPRINT ([`DecodeError::FingerprintMismatch`]) and
//! records whether MESSAGE-INTEGRITY was present; [`Message::decode_verified`] or
//! [`verify_integrity`] check it, in constant time, against an [`IntegrityKey`]
//! ([`DecodeError::IntegrityMismatch`], [`DecodeError::IntegrityMissing`]).
//!
//! Keys use the password bytes as given: SASLprep (RFC 4013), which RFC 5389 §15.4 applies to
//! the password, is not implemented, so a caller with non-ASCII passwords must pass them already
//! prepared. The RFC 5769 §2.4 vector verifies with the prepared password "TheMatrIX" and fails
//! with the unprepared one (see the tests).

mod codec;
mod packet;
mod trailer;

use std::fmt;
use std::net::SocketAddr;

use bytecodec::{DecodeExt, Encode, Eos, SizedEncode, TryTaggedDecode};
use stun_codec::rfc5245::attributes as rfc5245;
use stun_codec::rfc5389::attributes as rfc5389;
use stun_codec::rfc5780::attributes as rfc5780;
use stun_codec::{Attribute as _, AttributeType, MessageDecoder, MessageEncoder};

use codec::{Attr, AttrDecoder};
pub use packet::{Packet, RawAttribute, RawAttributes};

/// The magic cookie (RFC 5389 §6).
pub const MAGIC_COOKIE: u32 = 0x2112_A442;
/// The STUN header length (RFC 5389 §6).
pub const HEADER_LEN: usize = 20;
/// What [`BindingRequest::software`] puts in SOFTWARE (RFC 5389 §15.10).
pub const SOFTWARE: &str = concat!("FogConnect ", env!("CARGO_PKG_VERSION"));

/// Attribute types FogConnect reads or writes (RFC 5389 §18.2, RFC 5780 §9.1, RFC 3489 §11.2).
pub mod attribute_type {
    /// MAPPED-ADDRESS (RFC 5389 §15.1).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// CHANGE-REQUEST (RFC 5780 §7.2).
    pub const CHANGE_REQUEST: u16 = 0x0003;
    /// SOURCE-ADDRESS (RFC 3489 §11.2.5).
    pub const SOURCE_ADDRESS: u16 = 0x0004;
    /// CHANGED-ADDRESS (RFC 3489 §11.2.3).
    pub const CHANGED_ADDRESS: u16 = 0x0005;
    /// USERNAME (RFC 5389 §15.3).
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (RFC 5389 §15.4).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE (RFC 5389 §15.6).
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES (RFC 5389 §15.9).
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// REALM (RFC 5389 §15.7).
    pub const REALM: u16 = 0x0014;
    /// NONCE (RFC 5389 §15.8).
    pub const NONCE: u16 = 0x0015;
    /// XOR-MAPPED-ADDRESS (RFC 5389 §15.2).
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// PADDING (RFC 5780 §7.6).
    pub const PADDING: u16 = 0x0026;
    /// RESPONSE-PORT (RFC 5780 §7.5).
    pub const RESPONSE_PORT: u16 = 0x0027;
    /// XOR-MAPPED-ADDRESS as pre-RFC 5389 drafts numbered it; read, never written.
    pub const XOR_MAPPED_ADDRESS_OLD: u16 = 0x8020;
    /// SOFTWARE (RFC 5389 §15.10).
    pub const SOFTWARE: u16 = 0x8022;
    /// ALTERNATE-SERVER (RFC 5389 §15.11).
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    /// FINGERPRINT (RFC 5389 §15.5).
    pub const FINGERPRINT: u16 = 0x8028;
    /// RESPONSE-ORIGIN (RFC 5780 §7.3).
    pub const RESPONSE_ORIGIN: u16 = 0x802B;
    /// OTHER-ADDRESS (RFC 5780 §7.4).
    pub const OTHER_ADDRESS: u16 = 0x802C;
    /// NOMINATION (draft-thatcher-ice-renomination-01 §4; libwebrtc's code point).
    pub const NOMINATION: u16 = 0xC001;
}

/// A 96-bit transaction ID (RFC 5389 §6). Classic messages carry 32 more bits in
/// [`Cookie::Classic`].
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransactionId([u8; 12]);

impl TransactionId {
    /// The ID with these bytes. RFC 5389 §6 wants them uniformly random; the caller draws them
    /// from its seeded RNG.
    pub const fn new(bytes: [u8; 12]) -> Self {
        Self(bytes)
    }

    /// The bytes.
    pub const fn as_bytes(&self) -> &[u8; 12] {
        &self.0
    }
}

impl fmt::Debug for TransactionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TransactionId(")?;
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

/// The message class (RFC 5389 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    /// A request (0b00).
    Request,
    /// An indication (0b01).
    Indication,
    /// A success response (0b10).
    SuccessResponse,
    /// An error response (0b11).
    ErrorResponse,
}

/// A 12-bit STUN method (RFC 5389 §6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Method(u16);

impl Method {
    /// Binding (RFC 5389 §18.1).
    pub const BINDING: Self = Self(0x001);

    /// The method with this codepoint, if it fits in 12 bits.
    pub const fn new(codepoint: u16) -> Option<Self> {
        if codepoint <= 0xFFF {
            Some(Self(codepoint))
        } else {
            None
        }
    }

    /// The codepoint.
    pub const fn as_u16(self) -> u16 {
        self.0
    }
}

/// What sits between the length and the transaction ID.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Cookie {
    /// 0x2112A442: an RFC 5389 (or later) message.
    #[default]
    Magic,
    /// Anything else: an RFC 3489 message, and these are the first 32 bits of its 128-bit
    /// transaction ID (RFC 5389 §12).
    Classic([u8; 4]),
}

/// CHANGE-REQUEST flags (RFC 5780 §7.2).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct ChangeRequest {
    /// Answer from the other IP address.
    pub change_ip: bool,
    /// Answer from the other port.
    pub change_port: bool,
}

/// ERROR-CODE (RFC 5389 §15.6).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ErrorCode {
    /// 300–599 (stun_codec refuses the 600 class RFC 5389 allows but never uses).
    pub code: u16,
    /// The reason phrase.
    pub reason: String,
}

impl ErrorCode {
    /// 400 Bad Request (RFC 5389 §15.6).
    pub const BAD_REQUEST: u16 = 400;
    /// 401 Unauthorized (RFC 5389 §15.6).
    pub const UNAUTHORIZED: u16 = 401;
    /// 420 Unknown Attribute (RFC 5389 §15.6).
    pub const UNKNOWN_ATTRIBUTE: u16 = 420;
    /// 438 Stale Nonce (RFC 5389 §15.6).
    pub const STALE_NONCE: u16 = 438;
    /// 500 Server Error (RFC 5389 §15.6).
    pub const SERVER_ERROR: u16 = 500;

    /// `code` with the reason phrase RFC 5389 §15.6 suggests (empty for codes it does not list).
    pub fn new(code: u16) -> Self {
        let reason = match code {
            300 => "Try Alternate",
            Self::BAD_REQUEST => "Bad Request",
            Self::UNAUTHORIZED => "Unauthorized",
            Self::UNKNOWN_ATTRIBUTE => "Unknown Attribute",
            Self::STALE_NONCE => "Stale Nonce",
            Self::SERVER_ERROR => "Server Error",
            _ => "",
        };
        Self {
            code,
            reason: reason.to_owned(),
        }
    }
}

/// Every attribute FogConnect understands, typed. Absent attributes are `None` (or empty).
/// On decode only the first occurrence of each counts (RFC 5389 §15).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Attributes {
    /// MAPPED-ADDRESS (RFC 5389 §15.1).
    pub mapped_address: Option<SocketAddr>,
    /// XOR-MAPPED-ADDRESS (RFC 5389 §15.2), already un-XORed. Decode also reads the pre-RFC
    /// codepoint 0x8020 when 0x0020 is absent.
    pub xor_mapped_address: Option<SocketAddr>,
    /// USERNAME (RFC 5389 §15.3), fewer than 513 bytes.
    pub username: Option<String>,
    /// ERROR-CODE (RFC 5389 §15.6).
    pub error_code: Option<ErrorCode>,
    /// UNKNOWN-ATTRIBUTES (RFC 5389 §15.9): the types a server did not understand.
    pub unknown_attributes: Vec<u16>,
    /// REALM (RFC 5389 §15.7), fewer than 128 characters.
    pub realm: Option<String>,
    /// NONCE (RFC 5389 §15.8), fewer than 128 characters.
    pub nonce: Option<String>,
    /// SOFTWARE (RFC 5389 §15.10), fewer than 128 characters.
    pub software: Option<String>,
    /// ALTERNATE-SERVER (RFC 5389 §15.11).
    pub alternate_server: Option<SocketAddr>,
    /// CHANGE-REQUEST (RFC 5780 §7.2).
    pub change_request: Option<ChangeRequest>,
    /// RESPONSE-PORT (RFC 5780 §7.5).
    pub response_port: Option<u16>,
    /// PADDING (RFC 5780 §7.6): the value length; encoded as that many zero bytes.
    pub padding: Option<u16>,
    /// RESPONSE-ORIGIN (RFC 5780 §7.3).
    pub response_origin: Option<SocketAddr>,
    /// OTHER-ADDRESS (RFC 5780 §7.4).
    pub other_address: Option<SocketAddr>,
    /// SOURCE-ADDRESS (RFC 3489 §11.2.5), sent by classic servers.
    pub source_address: Option<SocketAddr>,
    /// CHANGED-ADDRESS (RFC 3489 §11.2.3), sent by classic servers.
    pub changed_address: Option<SocketAddr>,
    /// PRIORITY (RFC 8445 §7.1.1, §16.1): the priority a peer-reflexive candidate learnt from this
    /// connectivity check would have.
    pub priority: Option<u32>,
    /// USE-CANDIDATE (RFC 8445 §7.1.2, §16.1): the controlling agent nominates this pair.
    pub use_candidate: bool,
    /// ICE-CONTROLLED (RFC 8445 §7.1.3, §16.1): the sender is controlled; the tie-breaker.
    pub ice_controlled: Option<u64>,
    /// ICE-CONTROLLING (RFC 8445 §7.1.3, §16.1): the sender is controlling; the tie-breaker.
    pub ice_controlling: Option<u64>,
    /// NOMINATION (draft-thatcher-ice-renomination-01 §4): with USE-CANDIDATE, the count of
    /// the controlling agent's nominations; the controlled agent follows the largest. 24 bits
    /// (higher bits are dropped when written and ignored when read).
    pub nomination: Option<u32>,
}

/// A STUN message: the `Repr` that [`decode`](Self::decode) produces and
/// [`encode`](Self::encode) writes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The class.
    pub class: Class,
    /// The method.
    pub method: Method,
    /// The transaction ID.
    pub transaction_id: TransactionId,
    /// RFC 5389 or classic RFC 3489 (see the [module docs](self)).
    pub cookie: Cookie,
    /// The attributes FogConnect understands.
    pub attributes: Attributes,
    /// Decode only: comprehension-required attribute types (below 0x8000) not understood here,
    /// in order of appearance without repeats. A server answers these with 420 (RFC 5389
    /// §7.3.1). Ignored by `encode`.
    pub unknown_required: Vec<u16>,
    /// Decode only: whether MESSAGE-INTEGRITY was present (checked only by
    /// [`decode_verified`](Self::decode_verified) and [`verify_integrity`]). Ignored by
    /// `encode`, which adds it when given a key.
    pub integrity: bool,
    /// Decode: a FINGERPRINT was present (and correct, or decoding fails). Encode: append one.
    pub fingerprint: bool,
}

/// Why bytes are not an acceptable STUN message. The peer's fault, always.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DecodeError {
    /// Shorter than the 20-byte header (RFC 5389 §6).
    TooShort,
    /// One of the two top bits is set (RFC 5389 §6).
    NotStun,
    /// The length field is not a multiple of 4 or does not match the datagram (RFC 5389 §6).
    BadLength,
    /// An attribute runs past the end of the message (RFC 5389 §15).
    TruncatedAttribute,
    /// This attribute's value is malformed.
    InvalidAttribute(u16),
    /// `stun_codec` refused the message for a reason not tied to one attribute.
    Rejected,
    /// An attribute follows FINGERPRINT (RFC 5389 §15.5).
    FingerprintNotLast,
    /// FINGERPRINT does not match the message (RFC 5389 §15.5).
    FingerprintMismatch,
    /// A key was given but the message has no MESSAGE-INTEGRITY (RFC 5389 §10.1.2).
    IntegrityMissing,
    /// MESSAGE-INTEGRITY does not match the key (RFC 5389 §15.4).
    IntegrityMismatch,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooShort => write!(f, "shorter than a STUN header"),
            Self::NotStun => write!(f, "top two bits set: not STUN"),
            Self::BadLength => write!(f, "length field does not match the datagram"),
            Self::TruncatedAttribute => write!(f, "attribute runs past the end"),
            Self::InvalidAttribute(t) => write!(f, "malformed attribute 0x{t:04x}"),
            Self::Rejected => write!(f, "malformed message"),
            Self::FingerprintNotLast => write!(f, "attribute after FINGERPRINT"),
            Self::FingerprintMismatch => write!(f, "FINGERPRINT mismatch"),
            Self::IntegrityMissing => write!(f, "MESSAGE-INTEGRITY missing"),
            Self::IntegrityMismatch => write!(f, "MESSAGE-INTEGRITY mismatch"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// Why a message could not be encoded: the caller's input or buffer, never the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncodeError {
    /// The buffer is shorter than the `needed` bytes of the message.
    BufferTooSmall {
        /// Bytes the message needs.
        needed: usize,
    },
    /// The message would be longer than the 16-bit length field allows (RFC 5389 §6).
    TooLong,
    /// This attribute's value is out of its RFC range (a too-long USERNAME, REALM, NONCE or
    /// SOFTWARE, an ERROR-CODE outside 300–599).
    InvalidAttribute(u16),
    /// RFC 3489 messages cannot carry this crate's MESSAGE-INTEGRITY or FINGERPRINT: both were
    /// defined differently or not at all before RFC 5389.
    ClassicTrailer,
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BufferTooSmall { needed } => write!(f, "buffer too small: {needed} bytes needed"),
            Self::TooLong => write!(f, "message longer than 65,535 bytes after the header"),
            Self::InvalidAttribute(t) => write!(f, "attribute 0x{t:04x} out of range"),
            Self::ClassicTrailer => {
                write!(
                    f,
                    "RFC 3489 messages take no MESSAGE-INTEGRITY or FINGERPRINT"
                )
            }
        }
    }
}

impl std::error::Error for EncodeError {}

/// An HMAC-SHA1 key for MESSAGE-INTEGRITY (RFC 5389 §15.4). Its `Debug` does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct IntegrityKey(Vec<u8>);

impl IntegrityKey {
    /// Short-term credentials: the key is the password (RFC 5389 §15.4; SASLprep not applied,
    /// see the [module docs](self)).
    pub fn short_term(password: &str) -> Self {
        Self(password.as_bytes().to_vec())
    }

    /// Long-term credentials: MD5(username ":" realm ":" password) (RFC 5389 §15.4; SASLprep
    /// not applied, see the [module docs](self)).
    pub fn long_term(username: &str, realm: &str, password: &str) -> Self {
        Self(trailer::long_term_key(username, realm, password).to_vec())
    }

    /// A key from raw bytes.
    pub fn from_bytes(key: impl Into<Vec<u8>>) -> Self {
        Self(key.into())
    }

    /// The key bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for IntegrityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IntegrityKey(..)")
    }
}

/// Credentials a request is signed with (RFC 5389 §10).
#[derive(Clone, PartialEq, Eq)]
pub enum Credentials {
    /// Short-term (RFC 5389 §10.1): USERNAME plus MESSAGE-INTEGRITY keyed by the password.
    ShortTerm {
        /// USERNAME.
        username: String,
        /// The password.
        password: String,
    },
    /// Long-term (RFC 5389 §10.2): USERNAME, REALM and NONCE from the server's 401, and
    /// MESSAGE-INTEGRITY keyed by MD5(username:realm:password).
    LongTerm {
        /// USERNAME.
        username: String,
        /// REALM, as the server sent it.
        realm: String,
        /// NONCE, as the server sent it.
        nonce: String,
        /// The password.
        password: String,
    },
}

impl Credentials {
    /// The MESSAGE-INTEGRITY key.
    pub fn key(&self) -> IntegrityKey {
        match self {
            Self::ShortTerm { password, .. } => IntegrityKey::short_term(password),
            Self::LongTerm {
                username,
                realm,
                password,
                ..
            } => IntegrityKey::long_term(username, realm, password),
        }
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ShortTerm { username, .. } => f
                .debug_struct("ShortTerm")
                .field("username", username)
                .finish_non_exhaustive(),
            Self::LongTerm {
                username,
                realm,
                nonce,
                ..
            } => f
                .debug_struct("LongTerm")
                .field("username", username)
                .field("realm", realm)
                .field("nonce", nonce)
                .finish_non_exhaustive(),
        }
    }
}

/// Checks the MESSAGE-INTEGRITY of a datagram against `key`, in constant time (RFC 5389
/// §15.4). For a server that picks the key from the USERNAME of an already decoded message.
pub fn verify_integrity(bytes: &[u8], key: &IntegrityKey) -> Result<(), DecodeError> {
    let packet = Packet::new_checked(bytes)?;
    let at = trailer::Trailer::locate(&packet)?
        .integrity
        .ok_or(DecodeError::IntegrityMissing)?;
    trailer::check_integrity(bytes, at, key)
}

/// Appends MESSAGE-INTEGRITY (with `key`, RFC 5389 §15.4) and FINGERPRINT (with `fingerprint`,
/// §15.5) to a message whose header and attributes fill `buf[..len]`, fixing the length field;
/// returns the new length. For protocols on top of STUN (TURN) that write their own attributes
/// and need the same trailer as [`Message::encode`].
///
/// `buf[..len]` must start with a 20-byte header and hold whole, padded attributes.
pub fn append_trailer(
    buf: &mut [u8],
    len: usize,
    key: Option<&IntegrityKey>,
    fingerprint: bool,
) -> Result<usize, EncodeError> {
    if len < HEADER_LEN || len % 4 != 0 || len > buf.len() {
        return Err(EncodeError::BufferTooSmall { needed: HEADER_LEN });
    }
    let mut total = len;
    if key.is_some() {
        total += trailer::INTEGRITY_WIRE_LEN;
    }
    if fingerprint {
        total += trailer::FINGERPRINT_WIRE_LEN;
    }
    if total - HEADER_LEN > usize::from(u16::MAX) {
        return Err(EncodeError::TooLong);
    }
    if total > buf.len() {
        return Err(EncodeError::BufferTooSmall { needed: total });
    }
    let mut end = len;
    if let Some(key) = key {
        end = trailer::append_integrity(buf, end, key);
    }
    if fingerprint {
        end = trailer::append_fingerprint(buf, end);
    } else {
        let length = u16::try_from(end - HEADER_LEN).map_err(|_| EncodeError::TooLong)?;
        buf[2..4].copy_from_slice(&length.to_be_bytes());
    }
    Ok(end)
}

impl Message {
    /// A message with no attributes.
    pub fn new(class: Class, method: Method, transaction_id: TransactionId) -> Self {
        Self {
            class,
            method,
            transaction_id,
            cookie: Cookie::Magic,
            attributes: Attributes::default(),
            unknown_required: Vec::new(),
            integrity: false,
            fingerprint: false,
        }
    }

    /// Decodes a datagram. Never panics; checks the header (RFC 5389 §6), the attribute layout
    /// (§15) and FINGERPRINT if present (§15.5), but not MESSAGE-INTEGRITY.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let packet = Packet::new_checked(bytes)?;
        let trailer = trailer::Trailer::locate(&packet)?;
        if let Some(at) = trailer.fingerprint {
            trailer::check_fingerprint(bytes, at)?;
        }
        Self::decode_body(&packet, trailer)
    }

    /// Decodes a datagram that must carry a MESSAGE-INTEGRITY valid for `key` (RFC 5389
    /// §10.1.2, §10.2.2), compared in constant time.
    pub fn decode_verified(bytes: &[u8], key: &IntegrityKey) -> Result<Self, DecodeError> {
        let packet = Packet::new_checked(bytes)?;
        let trailer = trailer::Trailer::locate(&packet)?;
        if let Some(at) = trailer.fingerprint {
            trailer::check_fingerprint(bytes, at)?;
        }
        let at = trailer.integrity.ok_or(DecodeError::IntegrityMissing)?;
        trailer::check_integrity(bytes, at, key)?;
        Self::decode_body(&packet, trailer)
    }

    fn decode_body(packet: &Packet<&[u8]>, trailer: trailer::Trailer) -> Result<Self, DecodeError> {
        let bytes = packet.as_bytes();
        let body_end = trailer.body_end(bytes.len());
        // stun_codec wants the magic cookie and a length that ends where we stop reading.
        let mut scratch = bytes[..body_end].to_vec();
        let body_len = u16::try_from(body_end - HEADER_LEN).map_err(|_| DecodeError::BadLength)?;
        scratch[2..4].copy_from_slice(&body_len.to_be_bytes());
        scratch[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        let decoded = match MessageDecoder::<Attr>::new().decode_from_bytes(&scratch) {
            Ok(Ok(message)) => message,
            Ok(Err(_)) | Err(_) => return Err(first_invalid_attribute(packet, body_end)),
        };

        let mut attributes = Attributes::default();
        let mut xor_old = None;
        for attr in decoded.attributes() {
            let a = &mut attributes;
            match attr {
                Attr::MappedAddress(v) => first(&mut a.mapped_address, v.address()),
                Attr::XorMappedAddress(v) => first(&mut a.xor_mapped_address, v.address()),
                Attr::XorMappedAddress2(v) => first(&mut xor_old, v.address()),
                Attr::Username(v) => first(&mut a.username, v.name().to_owned()),
                Attr::ErrorCode(v) => first(
                    &mut a.error_code,
                    ErrorCode {
                        code: v.code(),
                        reason: v.reason_phrase().to_owned(),
                    },
                ),
                Attr::UnknownAttributes(v) => {
                    if a.unknown_attributes.is_empty() {
                        a.unknown_attributes = v.unknowns().iter().map(|t| t.as_u16()).collect();
                    }
                }
                Attr::Realm(v) => first(&mut a.realm, v.text().to_owned()),
                Attr::Nonce(v) => first(&mut a.nonce, v.value().to_owned()),
                Attr::Software(v) => first(&mut a.software, v.description().to_owned()),
                Attr::AlternateServer(v) => first(&mut a.alternate_server, v.address()),
                Attr::ResponseOrigin(v) => first(&mut a.response_origin, v.address()),
                Attr::OtherAddress(v) => first(&mut a.other_address, v.address()),
                Attr::ChangeRequest(v) => first(
                    &mut a.change_request,
                    ChangeRequest {
                        change_ip: v.change_ip,
                        change_port: v.change_port,
                    },
                ),
                Attr::ResponsePort(v) => first(&mut a.response_port, v.0),
                Attr::Padding(v) => first(&mut a.padding, v.0),
                Attr::ChangedAddress(v) => first(&mut a.changed_address, v.0),
                Attr::SourceAddress(v) => first(&mut a.source_address, v.0),
                Attr::Priority(v) => first(&mut a.priority, v.prio()),
                Attr::UseCandidate(_) => a.use_candidate = true,
                Attr::IceControlled(v) => first(&mut a.ice_controlled, v.prio()),
                Attr::IceControlling(v) => first(&mut a.ice_controlling, v.prio()),
                Attr::Nomination(v) => first(&mut a.nomination, v.0),
            }
        }
        if attributes.xor_mapped_address.is_none() {
            attributes.xor_mapped_address = xor_old;
        }
        let mut unknown_required = Vec::new();
        for t in decoded.unknown_attributes().map(|a| a.get_type()) {
            if t.is_comprehension_required() && !unknown_required.contains(&t.as_u16()) {
                unknown_required.push(t.as_u16());
            }
        }

        Ok(Self {
            class: packet.class(),
            method: packet.method(),
            transaction_id: packet.transaction_id(),
            cookie: packet.cookie(),
            attributes,
            unknown_required,
            integrity: trailer.integrity.is_some(),
            fingerprint: trailer.fingerprint.is_some(),
        })
    }

    /// Writes the message into `buf` and returns its length. With `key`, MESSAGE-INTEGRITY is
    /// appended (RFC 5389 §15.4); with [`fingerprint`](Self::fingerprint), FINGERPRINT after it
    /// (§15.5).
    pub fn encode(&self, key: Option<&IntegrityKey>, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let (mut encoder, body, total) = self.prepare(key.is_some())?;
        if total > buf.len() {
            return Err(EncodeError::BufferTooSmall { needed: total });
        }
        let written = encoder
            .encode(&mut buf[..body], Eos::new(true))
            .map_err(|_| EncodeError::TooLong)?;
        debug_assert!(
            written == body && encoder.is_idle(),
            "sized encoder wrote {written} of {body}"
        );
        // stun_codec 0.4 shifts method bits M4–M11 to the wrong places (its decoder is right),
        // so the type is written here for every method (RFC 5389 §6, Figure 3).
        buf[0..2].copy_from_slice(&message_type(self.class, self.method).to_be_bytes());
        if let Cookie::Classic(bytes) = self.cookie {
            buf[4..8].copy_from_slice(&bytes);
        }
        let mut len = body;
        if let Some(key) = key {
            len = trailer::append_integrity(buf, len, key);
        }
        if self.fingerprint {
            len = trailer::append_fingerprint(buf, len);
        }
        Ok(len)
    }

    /// The length [`encode`](Self::encode) would write, with or without MESSAGE-INTEGRITY.
    pub fn encoded_len(&self, with_integrity: bool) -> Result<usize, EncodeError> {
        self.prepare(with_integrity).map(|(_, _, total)| total)
    }

    /// A started encoder, the length it writes, and the total with the trailer.
    fn prepare(
        &self,
        with_integrity: bool,
    ) -> Result<(MessageEncoder<Attr>, usize, usize), EncodeError> {
        if matches!(self.cookie, Cookie::Classic(_)) && (with_integrity || self.fingerprint) {
            return Err(EncodeError::ClassicTrailer);
        }
        let mut encoder = MessageEncoder::<Attr>::new();
        encoder
            .start_encoding(self.to_codec()?)
            .map_err(|_| EncodeError::TooLong)?;
        let body =
            usize::try_from(encoder.exact_requiring_bytes()).map_err(|_| EncodeError::TooLong)?;
        let mut total = body;
        if with_integrity {
            total += trailer::INTEGRITY_WIRE_LEN;
        }
        if self.fingerprint {
            total += trailer::FINGERPRINT_WIRE_LEN;
        }
        if total - HEADER_LEN > usize::from(u16::MAX) {
            return Err(EncodeError::TooLong);
        }
        Ok((encoder, body, total))
    }

    /// The encoded message in a new `Vec` (for tests and tools; machines use
    /// [`encode`](Self::encode) into the caller's buffer).
    pub fn to_bytes(&self, key: Option<&IntegrityKey>) -> Result<Vec<u8>, EncodeError> {
        let mut buf = vec![0u8; self.encoded_len(key.is_some())?];
        let n = self.encode(key, &mut buf)?;
        debug_assert_eq!(n, buf.len());
        Ok(buf)
    }

    /// The stun_codec message, attributes in one fixed order: credentials first (USERNAME,
    /// NONCE, REALM — the order of RFC 5769 §2.4), the ICE attributes, request attributes, addresses, errors,
    /// SOFTWARE, and PADDING last so that it pads everything before the trailer.
    fn to_codec(&self) -> Result<stun_codec::Message<Attr>, EncodeError> {
        use attribute_type as t;
        let method =
            stun_codec::Method::new(self.method.as_u16()).map_err(|_| EncodeError::TooLong)?;
        let class = match self.class {
            Class::Request => stun_codec::MessageClass::Request,
            Class::Indication => stun_codec::MessageClass::Indication,
            Class::SuccessResponse => stun_codec::MessageClass::SuccessResponse,
            Class::ErrorResponse => stun_codec::MessageClass::ErrorResponse,
        };
        let mut m = stun_codec::Message::new(
            class,
            method,
            stun_codec::TransactionId::new(self.transaction_id.0),
        );
        let a = &self.attributes;
        let invalid = |kind: u16| move |_| EncodeError::InvalidAttribute(kind);

        if let Some(v) = &a.username {
            m.add_attribute(rfc5389::Username::new(v.clone()).map_err(invalid(t::USERNAME))?);
        }
        if let Some(v) = &a.nonce {
            m.add_attribute(rfc5389::Nonce::new(v.clone()).map_err(invalid(t::NONCE))?);
        }
        if let Some(v) = &a.realm {
            m.add_attribute(rfc5389::Realm::new(v.clone()).map_err(invalid(t::REALM))?);
        }
        if let Some(v) = a.priority {
            m.add_attribute(rfc5245::Priority::new(v));
        }
        if a.use_candidate {
            m.add_attribute(rfc5245::UseCandidate::new());
        }
        if let Some(v) = a.ice_controlled {
            m.add_attribute(rfc5245::IceControlled::new(v));
        }
        if let Some(v) = a.ice_controlling {
            m.add_attribute(rfc5245::IceControlling::new(v));
        }
        if let Some(v) = a.nomination {
            m.add_attribute(codec::Nomination(v));
        }
        if let Some(v) = a.change_request {
            m.add_attribute(codec::ChangeRequest {
                change_ip: v.change_ip,
                change_port: v.change_port,
            });
        }
        if let Some(v) = a.response_port {
            m.add_attribute(codec::ResponsePort(v));
        }
        if let Some(v) = a.xor_mapped_address {
            m.add_attribute(rfc5389::XorMappedAddress::new(v));
        }
        if let Some(v) = a.mapped_address {
            m.add_attribute(rfc5389::MappedAddress::new(v));
        }
        if let Some(v) = a.response_origin {
            m.add_attribute(rfc5780::ResponseOrigin::new(v));
        }
        if let Some(v) = a.other_address {
            m.add_attribute(rfc5780::OtherAddress::new(v));
        }
        if let Some(v) = a.source_address {
            m.add_attribute(codec::SourceAddress(v));
        }
        if let Some(v) = a.changed_address {
            m.add_attribute(codec::ChangedAddress(v));
        }
        if let Some(v) = &a.error_code {
            m.add_attribute(
                rfc5389::ErrorCode::new(v.code, v.reason.clone())
                    .map_err(invalid(t::ERROR_CODE))?,
            );
        }
        if !a.unknown_attributes.is_empty() {
            let types = a.unknown_attributes.iter().map(|&v| AttributeType::new(v));
            m.add_attribute(rfc5389::UnknownAttributes::new(types.collect()));
        }
        if let Some(v) = a.alternate_server {
            m.add_attribute(rfc5389::AlternateServer::new(v));
        }
        if let Some(v) = &a.software {
            m.add_attribute(rfc5389::Software::new(v.clone()).map_err(invalid(t::SOFTWARE))?);
        }
        if let Some(v) = a.padding {
            m.add_attribute(codec::Padding(v));
        }
        Ok(m)
    }
}

/// The 14-bit message type: method bits M11–M0 with the class bits C1 C0 interleaved at bits 8
/// and 4 (RFC 5389 §6, Figure 3).
fn message_type(class: Class, method: Method) -> u16 {
    let c = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::SuccessResponse => 0b10,
        Class::ErrorResponse => 0b11,
    };
    let m = method.as_u16();
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
}

/// Sets `slot` unless an earlier attribute already did (RFC 5389 §15: the first one counts).
fn first<T>(slot: &mut Option<T>, value: T) {
    if slot.is_none() {
        *slot = Some(value);
    }
}

/// After stun_codec refused a message: the first attribute whose value does not decode on its
/// own. The error path only, so decoding each attribute again costs nothing in the common case.
fn first_invalid_attribute(packet: &Packet<&[u8]>, body_end: usize) -> DecodeError {
    for attr in packet.attributes().take_while(|a| a.offset < body_end) {
        let mut decoder = AttrDecoder::default();
        match decoder.try_start_decoding(AttributeType::new(attr.kind)) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return DecodeError::InvalidAttribute(attr.kind),
        }
        if decoder.decode_from_bytes(attr.value).is_err() {
            return DecodeError::InvalidAttribute(attr.kind);
        }
    }
    DecodeError::Rejected
}

/// A Binding request as a client builds it (RFC 5389 §7.1, RFC 5780 §5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindingRequest {
    /// The transaction ID; a retransmission reuses it (RFC 5389 §6).
    pub transaction_id: TransactionId,
    /// Ask for the answer from the other IP (RFC 5780 §7.2).
    pub change_ip: bool,
    /// Ask for the answer from the other port (RFC 5780 §7.2).
    pub change_port: bool,
    /// Ask for the answer on this port of our IP (RFC 5780 §7.5). Not with `padding`.
    pub response_port: Option<u16>,
    /// PADDING of this many bytes (RFC 5780 §7.6; the outgoing MTU is what §5 suggests).
    pub padding: Option<u16>,
    /// Add SOFTWARE ([`SOFTWARE`], RFC 5389 §15.10).
    pub software: bool,
    /// Add FINGERPRINT (RFC 5389 §15.5; RFC 5780 §5 wants it when STUN shares the socket).
    pub fingerprint: bool,
    /// Sign with USERNAME (REALM, NONCE) and MESSAGE-INTEGRITY (RFC 5389 §10).
    pub credentials: Option<Credentials>,
}

impl BindingRequest {
    /// A plain Binding request: no attributes, which is what RFC 5389 §12.1 says also works with
    /// an RFC 3489 server.
    pub fn new(transaction_id: TransactionId) -> Self {
        Self {
            transaction_id,
            change_ip: false,
            change_port: false,
            response_port: None,
            padding: None,
            software: false,
            fingerprint: false,
            credentials: None,
        }
    }

    /// The message this request encodes as. CHANGE-REQUEST is included only with a flag set: a
    /// server without an alternate address answers any CHANGE-REQUEST with 420
    /// (RFC 5780 §6.1).
    pub fn to_message(&self) -> Message {
        let mut message = Message::new(Class::Request, Method::BINDING, self.transaction_id);
        let a = &mut message.attributes;
        if self.change_ip || self.change_port {
            a.change_request = Some(ChangeRequest {
                change_ip: self.change_ip,
                change_port: self.change_port,
            });
        }
        a.response_port = self.response_port;
        a.padding = self.padding;
        if self.software {
            a.software = Some(SOFTWARE.to_owned());
        }
        match &self.credentials {
            Some(Credentials::ShortTerm { username, .. }) => a.username = Some(username.clone()),
            Some(Credentials::LongTerm {
                username,
                realm,
                nonce,
                ..
            }) => {
                a.username = Some(username.clone());
                a.realm = Some(realm.clone());
                a.nonce = Some(nonce.clone());
            }
            None => {}
        }
        message.fingerprint = self.fingerprint;
        message
    }

    /// Writes the request into `buf` and returns its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        let key = self.credentials.as_ref().map(Credentials::key);
        self.to_message().encode(key.as_ref(), buf)
    }
}

/// A Binding success or error response (RFC 5389 §7.3.1, RFC 5780 §6.1, RFC 3489 §11.1), as the
/// server builds it and a client reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindingResponse {
    /// The request's transaction ID.
    pub transaction_id: TransactionId,
    /// [`Cookie::Classic`] when answering an RFC 3489 request (echoing its ID).
    pub cookie: Cookie,
    /// XOR-MAPPED-ADDRESS: the request's source as the server saw it (RFC 5389 §15.2).
    pub xor_mapped: Option<SocketAddr>,
    /// MAPPED-ADDRESS: the same, not XORed (RFC 5389 §15.1; RFC 5780 §6.1 wants both, so that a
    /// client can spot an ALG that rewrites addresses, §3.6).
    pub mapped: Option<SocketAddr>,
    /// RESPONSE-ORIGIN: where the response was sent from (RFC 5780 §7.3).
    pub response_origin: Option<SocketAddr>,
    /// OTHER-ADDRESS: the server's alternate IP and port (RFC 5780 §7.4).
    pub other_address: Option<SocketAddr>,
    /// SOURCE-ADDRESS, the RFC 3489 name for RESPONSE-ORIGIN (§11.2.5).
    pub source_address: Option<SocketAddr>,
    /// CHANGED-ADDRESS, the RFC 3489 name for OTHER-ADDRESS (§11.2.3).
    pub changed_address: Option<SocketAddr>,
    /// PADDING length (RFC 5780 §7.6).
    pub padding: Option<u16>,
    /// ERROR-CODE: set for an error response.
    pub error: Option<ErrorCode>,
    /// UNKNOWN-ATTRIBUTES, with a 420 (RFC 5389 §15.9).
    pub unknown_attributes: Vec<u16>,
    /// SOFTWARE (RFC 5389 §15.10).
    pub software: Option<String>,
    /// FINGERPRINT present (decode) or to add (encode).
    pub fingerprint: bool,
}

impl BindingResponse {
    /// The response in `message`, if it is a Binding success or error response.
    pub fn from_message(message: Message) -> Option<Self> {
        if message.method != Method::BINDING {
            return None;
        }
        let a = message.attributes;
        let error = match message.class {
            Class::SuccessResponse => None,
            // An error response without ERROR-CODE is still an error (RFC 5389 §7.3.1 requires
            // one; 500 is what a client would make of its absence).
            Class::ErrorResponse => Some(
                a.error_code
                    .unwrap_or_else(|| ErrorCode::new(ErrorCode::SERVER_ERROR)),
            ),
            Class::Request | Class::Indication => return None,
        };
        Some(Self {
            transaction_id: message.transaction_id,
            cookie: message.cookie,
            xor_mapped: a.xor_mapped_address,
            mapped: a.mapped_address,
            response_origin: a.response_origin,
            other_address: a.other_address,
            source_address: a.source_address,
            changed_address: a.changed_address,
            padding: a.padding,
            error,
            unknown_attributes: a.unknown_attributes,
            software: a.software,
            fingerprint: message.fingerprint,
        })
    }

    /// Decodes a datagram that must be a Binding response.
    pub fn decode(bytes: &[u8]) -> Result<Option<Self>, DecodeError> {
        Message::decode(bytes).map(Self::from_message)
    }

    /// The message this response encodes as.
    pub fn to_message(&self) -> Message {
        let class = if self.error.is_some() {
            Class::ErrorResponse
        } else {
            Class::SuccessResponse
        };
        let mut message = Message::new(class, Method::BINDING, self.transaction_id);
        message.cookie = self.cookie;
        message.fingerprint = self.fingerprint;
        message.attributes = Attributes {
            xor_mapped_address: self.xor_mapped,
            mapped_address: self.mapped,
            response_origin: self.response_origin,
            other_address: self.other_address,
            source_address: self.source_address,
            changed_address: self.changed_address,
            padding: self.padding,
            error_code: self.error.clone(),
            unknown_attributes: self.unknown_attributes.clone(),
            software: self.software.clone(),
            ..Attributes::default()
        };
        message
    }

    /// Writes the response into `buf` and returns its length.
    pub fn encode(&self, buf: &mut [u8]) -> Result<usize, EncodeError> {
        self.to_message().encode(None, buf)
    }

    /// The reflexive address: XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (RFC 5389 §12.1: a client
    /// talking to an older server must take either).
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.xor_mapped.or(self.mapped)
    }

    /// The server's alternate address: OTHER-ADDRESS, else the RFC 3489 CHANGED-ADDRESS.
    pub fn other(&self) -> Option<SocketAddr> {
        self.other_address.or(self.changed_address)
    }

    /// Where the response says it came from: RESPONSE-ORIGIN, else the RFC 3489 SOURCE-ADDRESS.
    pub fn origin(&self) -> Option<SocketAddr> {
        self.response_origin.or(self.source_address)
    }
}

#[cfg(test)]
mod tests;
