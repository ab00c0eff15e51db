//! TURN messages (RFC 8656 §13–§15) and ChannelData (§12.4) on top of fog-stun's wire layer.
//!
//! - [`TurnMessage`] is the `Repr` of a STUN message carrying TURN methods and attributes.
//!   [`TurnMessage::decode`] never panics: fog-stun's [`Message::decode`] checks the header,
//!   the attribute layout and FINGERPRINT and reads the RFC 8489 attributes (USERNAME, REALM,
//!   NONCE, ERROR-CODE, SOFTWARE, XOR-MAPPED-ADDRESS); the TURN attributes are read here from
//!   fog-stun's zero-copy [`Packet`] view. [`TurnMessage::encode`] writes every attribute itself
//!   and signs with fog-stun's [`append_trailer`], so MESSAGE-INTEGRITY and FINGERPRINT are
//!   computed by one piece of code for STUN and TURN alike.
//! - [`ChannelData`] is the 4-byte-header framing of §12.4.
//! - [`stream`] cuts a TCP or TLS byte stream into both (RFC 8656 §3.1, §12.5).
//!
//! # Why not stun_codec's `rfc5766` module
//!
//! stun_codec 0.4 has RFC 5766's attributes, not RFC 8656's: REQUESTED-ADDRESS-FAMILY (§18.6)
//! and the 440/443 codes are missing. Its XOR-PEER-ADDRESS and XOR-RELAYED-ADDRESS decode only
//! inside a stun_codec `Message` (they read the transaction ID from it in `after_decode`), which
//! fog-stun deliberately hides, and its CHANNEL-NUMBER decoder fails the whole message on a
//! number outside 0x4000–0x4FFF where RFC 8656 §12.2 wants a 400 answer. The TURN attributes are
//! fixed-layout words and addresses, so they are parsed from the raw TLVs here.

mod channel;
pub mod stream;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use fog_stun::wire::{HEADER_LEN, MAGIC_COOKIE, Message, Packet, append_trailer};

pub use channel::{CHANNEL_DATA_HEADER_LEN, ChannelData, ChannelDataError};
/// fog-stun's types that TURN messages are made of.
pub use fog_stun::wire::{
    Class, DecodeError, EncodeError, ErrorCode, IntegrityKey, Method, TransactionId,
};

/// TURN methods (RFC 8656 §17, Table 4).
pub mod method {
    use fog_stun::wire::Method;

    /// Binding, which a TURN server also answers (RFC 8489 §18.1).
    pub const BINDING: Method = Method::BINDING;
    /// Allocate (RFC 8656 §7).
    pub const ALLOCATE: Method = method(0x003);
    /// Refresh (RFC 8656 §8).
    pub const REFRESH: Method = method(0x004);
    /// Send, an indication only (RFC 8656 §11.1).
    pub const SEND: Method = method(0x006);
    /// Data, an indication only (RFC 8656 §11.4).
    pub const DATA: Method = method(0x007);
    /// CreatePermission (RFC 8656 §10).
    pub const CREATE_PERMISSION: Method = method(0x008);
    /// ChannelBind (RFC 8656 §12).
    pub const CHANNEL_BIND: Method = method(0x009);

    const fn method(codepoint: u16) -> Method {
        match Method::new(codepoint) {
            Some(m) => m,
            None => panic!("methods are 12-bit"),
        }
    }
}

/// Attribute types read or written here (RFC 8656 §18, RFC 8489 §18.3).
pub mod attribute_type {
    /// USERNAME (RFC 8489 §14.3).
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (RFC 8489 §14.5).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE (RFC 8489 §14.8).
    pub const ERROR_CODE: u16 = 0x0009;
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.9).
    pub const UNKNOWN_ATTRIBUTES: u16 = 0x000A;
    /// CHANNEL-NUMBER (RFC 8656 §18.1).
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME (RFC 8656 §18.2).
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3).
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA (RFC 8656 §18.4).
    pub const DATA: u16 = 0x0013;
    /// REALM (RFC 8489 §14.9).
    pub const REALM: u16 = 0x0014;
    /// NONCE (RFC 8489 §14.10).
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    pub const REQUESTED_ADDRESS_FAMILY: u16 = 0x0017;
    /// EVEN-PORT (RFC 8656 §18.7).
    pub const EVEN_PORT: u16 = 0x0018;
    /// REQUESTED-TRANSPORT (RFC 8656 §18.8).
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// DONT-FRAGMENT (RFC 8656 §18.9): not supported, so a server answers it with 420.
    pub const DONT_FRAGMENT: u16 = 0x001A;
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// RESERVATION-TOKEN (RFC 8656 §18.10): not supported.
    pub const RESERVATION_TOKEN: u16 = 0x0022;
    /// SOFTWARE (RFC 8489 §14.14).
    pub const SOFTWARE: u16 = 0x8022;
    /// ALTERNATE-SERVER (RFC 8489 §14.15): a plain (not XOR) address, in a 300.
    pub const ALTERNATE_SERVER: u16 = 0x8023;
    /// FINGERPRINT (RFC 8489 §14.7).
    pub const FINGERPRINT: u16 = 0x8028;
}

/// ERROR-CODE values a TURN server sends (RFC 8489 §14.8, RFC 8656 §19).
pub mod code {
    /// 300 Try Alternate: the server to use instead is in ALTERNATE-SERVER (RFC 8489 §10);
    /// only in answer to an authenticated request, and signed.
    pub const TRY_ALTERNATE: u16 = 300;
    /// 400 Bad Request.
    pub const BAD_REQUEST: u16 = 400;
    /// 401 Unauthorized: no or wrong credentials (RFC 8489 §9.2.4).
    pub const UNAUTHORIZED: u16 = 401;
    /// 403 Forbidden (RFC 8656 §19).
    pub const FORBIDDEN: u16 = 403;
    /// 420 Unknown Attribute (RFC 8489 §14.8).
    pub const UNKNOWN_ATTRIBUTE: u16 = 420;
    /// 437 Allocation Mismatch: no allocation on this 5-tuple, or one already (RFC 8656 §19).
    pub const ALLOCATION_MISMATCH: u16 = 437;
    /// 438 Stale Nonce (RFC 8489 §14.8).
    pub const STALE_NONCE: u16 = 438;
    /// 440 Address Family not Supported (RFC 8656 §19).
    pub const ADDRESS_FAMILY_NOT_SUPPORTED: u16 = 440;
    /// 441 Wrong Credentials: not the allocation's username (RFC 8656 §19).
    pub const WRONG_CREDENTIALS: u16 = 441;
    /// 442 Unsupported Transport Protocol (RFC 8656 §19).
    pub const UNSUPPORTED_TRANSPORT: u16 = 442;
    /// 443 Peer Address Family Mismatch (RFC 8656 §19).
    pub const PEER_ADDRESS_FAMILY_MISMATCH: u16 = 443;
    /// 486 Allocation Quota Reached (RFC 8656 §19).
    pub const ALLOCATION_QUOTA_REACHED: u16 = 486;
    /// 500 Server Error.
    pub const SERVER_ERROR: u16 = 500;
    /// 508 Insufficient Capacity (RFC 8656 §19).
    pub const INSUFFICIENT_CAPACITY: u16 = 508;

    /// A short reason phrase (RFC 8489 §14.8 and RFC 8656 §19 suggest these).
    pub fn reason(code: u16) -> &'static str {
        match code {
            BAD_REQUEST => "Bad Request",
            UNAUTHORIZED => "Unauthorized",
            FORBIDDEN => "Forbidden",
            UNKNOWN_ATTRIBUTE => "Unknown Attribute",
            ALLOCATION_MISMATCH => "Allocation Mismatch",
            STALE_NONCE => "Stale Nonce",
            ADDRESS_FAMILY_NOT_SUPPORTED => "Address Family not Supported",
            WRONG_CREDENTIALS => "Wrong Credentials",
            UNSUPPORTED_TRANSPORT => "Unsupported Transport Protocol",
            PEER_ADDRESS_FAMILY_MISMATCH => "Peer Address Family Mismatch",
            ALLOCATION_QUOTA_REACHED => "Allocation Quota Reached",
            SERVER_ERROR => "Server Error",
            INSUFFICIENT_CAPACITY => "Insufficient Capacity",
            _ => "",
        }
    }
}

/// The REQUESTED-TRANSPORT value for UDP, the IANA protocol number (RFC 8656 §18.8).
pub const TRANSPORT_UDP: u8 = 17;
/// Longest USERNAME value (RFC 8489 §14.3: fewer than 513 bytes).
pub const MAX_USERNAME_LEN: usize = 512;
/// Longest REALM, NONCE or SOFTWARE value in bytes (RFC 8489 §14.9, §14.10, §14.14: fewer than
/// 128 characters, up to 763 bytes).
pub const MAX_TEXT_LEN: usize = 763;
/// Most XOR-PEER-ADDRESS attributes read from one message; a CreatePermission may carry several
/// (RFC 8656 §10.1), and this bounds what one datagram can make a server do.
pub const MAX_PEERS_PER_MESSAGE: usize = 16;

/// An address family as REQUESTED-ADDRESS-FAMILY names it (RFC 8656 §18.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// 0x01.
    V4,
    /// 0x02.
    V6,
    /// Any other value (a server answers 440).
    Other(u8),
}

impl AddressFamily {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        if ip.is_ipv4() { Self::V4 } else { Self::V6 }
    }

    fn byte(self) -> u8 {
        match self {
            Self::V4 => 0x01,
            Self::V6 => 0x02,
            Self::Other(b) => b,
        }
    }
}

/// A STUN message with the TURN attributes typed. Absent attributes are `None` (or empty); on
/// decode only the first occurrence of each counts (RFC 8489 §14), except XOR-PEER-ADDRESS of
/// which up to [`MAX_PEERS_PER_MESSAGE`] are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnMessage {
    /// The class.
    pub class: Class,
    /// The method ([`method`]).
    pub method: Method,
    /// The transaction ID.
    pub transaction_id: TransactionId,
    /// USERNAME (RFC 8489 §14.3).
    pub username: Option<String>,
    /// REALM (RFC 8489 §14.9).
    pub realm: Option<String>,
    /// NONCE (RFC 8489 §14.10).
    pub nonce: Option<String>,
    /// ERROR-CODE (RFC 8489 §14.8).
    pub error: Option<ErrorCode>,
    /// UNKNOWN-ATTRIBUTES (RFC 8489 §14.13), with a 420.
    pub unknown_attributes: Vec<u16>,
    /// SOFTWARE (RFC 8489 §14.14).
    pub software: Option<String>,
    /// ALTERNATE-SERVER (RFC 8489 §14.15), with a 300.
    pub alternate_server: Option<SocketAddr>,
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2): in an Allocate success, the client's reflexive
    /// address (RFC 8656 §7.2).
    pub xor_mapped_address: Option<SocketAddr>,
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    pub xor_relayed_address: Option<SocketAddr>,
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3), in order of appearance.
    pub xor_peer_addresses: Vec<SocketAddr>,
    /// LIFETIME in seconds (RFC 8656 §18.2).
    pub lifetime: Option<u32>,
    /// REQUESTED-TRANSPORT protocol number (RFC 8656 §18.8).
    pub requested_transport: Option<u8>,
    /// REQUESTED-ADDRESS-FAMILY (RFC 8656 §18.6).
    pub requested_address_family: Option<AddressFamily>,
    /// EVEN-PORT (RFC 8656 §18.7): `Some(r)` asks for an even port, and with `r` for the next
    /// port to be reserved too.
    pub even_port: Option<bool>,
    /// CHANNEL-NUMBER (RFC 8656 §18.1), whatever its value; [`ChannelData::is_valid_channel`]
    /// says whether it is in range.
    pub channel_number: Option<u16>,
    /// DATA (RFC 8656 §18.4).
    pub data: Option<Vec<u8>>,
    /// Decode only: comprehension-required attribute types (below 0x8000) understood neither
    /// here nor by fog-stun, in order without repeats; a server answers a request carrying any
    /// with 420 (RFC 8489 §6.3.1.1).
    pub unknown_required: Vec<u16>,
    /// Decode only: MESSAGE-INTEGRITY was present (check it with [`verify_integrity`]).
    pub integrity: bool,
    /// Decode: FINGERPRINT was present and correct. Encode: append one.
    pub fingerprint: bool,
}

/// Checks the MESSAGE-INTEGRITY of a datagram against `key` in constant time (fog-stun's
/// [`fog_stun::wire::verify_integrity`]).
pub fn verify_integrity(bytes: &[u8], key: &IntegrityKey) -> Result<(), DecodeError> {
    fog_stun::wire::verify_integrity(bytes, key)
}

impl TurnMessage {
    /// A message without attributes, with FINGERPRINT on: it is how a STUN message is told
    /// apart from other protocols on a shared socket (RFC 8489 §7), which FogConnect does, and it
    /// costs 8 bytes.
    pub fn new(class: Class, method: Method, transaction_id: TransactionId) -> Self {
        Self {
            class,
            method,
            transaction_id,
            username: None,
            realm: None,
            nonce: None,
            error: None,
            unknown_attributes: Vec::new(),
            software: None,
            alternate_server: None,
            xor_mapped_address: None,
            xor_relayed_address: None,
            xor_peer_addresses: Vec::new(),
            lifetime: None,
            requested_transport: None,
            requested_address_family: None,
            even_port: None,
            channel_number: None,
            data: None,
            unknown_required: Vec::new(),
            integrity: false,
            fingerprint: true,
        }
    }

    /// An error response to `request` with `code` and its reason phrase.
    pub fn error_response(request: &TurnMessage, code: u16) -> Self {
        let mut m = Self::new(Class::ErrorResponse, request.method, request.transaction_id);
        m.error = Some(ErrorCode {
            code,
            reason: code::reason(code).to_owned(),
        });
        m
    }

    /// The error code of an error response (500 when the server left ERROR-CODE out, which
    /// RFC 8489 §6.3.4 does not allow).
    pub fn error_code(&self) -> Option<u16> {
        match self.class {
            Class::ErrorResponse => {
                Some(self.error.as_ref().map_or(code::SERVER_ERROR, |e| e.code))
            }
            _ => None,
        }
    }

    /// Decodes a datagram. Never panics. FINGERPRINT, when present, must be right;
    /// MESSAGE-INTEGRITY is only noted ([`integrity`](Self::integrity)).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let stun = Message::decode(bytes)?;
        let packet = Packet::new_checked(bytes)?;
        let tid = stun.transaction_id;
        let mut m = Self::new(stun.class, stun.method, tid);
        let a = stun.attributes;
        m.username = a.username;
        m.realm = a.realm;
        m.nonce = a.nonce;
        m.error = a.error_code;
        m.unknown_attributes = a.unknown_attributes;
        m.software = a.software;
        m.alternate_server = a.alternate_server;
        m.xor_mapped_address = a.xor_mapped_address;
        m.integrity = stun.integrity;
        m.fingerprint = stun.fingerprint;

        use attribute_type as t;
        for attr in packet.attributes() {
            let v = attr.value;
            let invalid = DecodeError::InvalidAttribute(attr.kind);
            match attr.kind {
                // RFC 8489 §14.5: what follows MESSAGE-INTEGRITY (but FINGERPRINT) is ignored.
                t::MESSAGE_INTEGRITY | t::FINGERPRINT => break,
                t::XOR_RELAYED_ADDRESS if m.xor_relayed_address.is_none() => {
                    m.xor_relayed_address = Some(xor_address(v, &tid).ok_or(invalid)?);
                }
                t::XOR_PEER_ADDRESS => {
                    let addr = xor_address(v, &tid).ok_or(invalid)?;
                    if m.xor_peer_addresses.len() < MAX_PEERS_PER_MESSAGE {
                        m.xor_peer_addresses.push(addr);
                    }
                }
                t::LIFETIME if m.lifetime.is_none() => {
                    let w: [u8; 4] = v.try_into().map_err(|_| invalid)?;
                    m.lifetime = Some(u32::from_be_bytes(w));
                }
                t::REQUESTED_TRANSPORT if m.requested_transport.is_none() => {
                    let w: [u8; 4] = v.try_into().map_err(|_| invalid)?;
                    // The three RFFU bytes are ignored (RFC 8656 §18.8).
                    m.requested_transport = Some(w[0]);
                }
                t::REQUESTED_ADDRESS_FAMILY if m.requested_address_family.is_none() => {
                    let w: [u8; 4] = v.try_into().map_err(|_| invalid)?;
                    m.requested_address_family = Some(match w[0] {
                        0x01 => AddressFamily::V4,
                        0x02 => AddressFamily::V6,
                        other => AddressFamily::Other(other),
                    });
                }
                t::EVEN_PORT if m.even_port.is_none() => {
                    // One byte: R, then seven RFFU bits that are ignored.
                    let [flags] = v else {
                        return Err(invalid);
                    };
                    m.even_port = Some(flags & 0x80 != 0);
                }
                t::CHANNEL_NUMBER if m.channel_number.is_none() => {
                    let w: [u8; 4] = v.try_into().map_err(|_| invalid)?;
                    m.channel_number = Some(u16::from_be_bytes([w[0], w[1]]));
                }
                t::DATA if m.data.is_none() => m.data = Some(v.to_vec()),
                _ => {}
            }
        }
        let understood = [
            t::XOR_RELAYED_ADDRESS,
            t::XOR_PEER_ADDRESS,
            t::LIFETIME,
            t::REQUESTED_TRANSPORT,
            t::REQUESTED_ADDRESS_FAMILY,
            t::EVEN_PORT,
            t::CHANNEL_NUMBER,
            t::DATA,
        ];
        m.unknown_required = stun
            .unknown_required
            .into_iter()
            .filter(|kind| !understood.contains(kind))
            .collect();
        Ok(m)
    }

    /// The length [`encode`](Self::encode) writes.
    pub fn encoded_len(&self, with_integrity: bool) -> usize {
        let text = |v: &Option<String>| v.as_ref().map_or(0, |s| attr_len(s.len()));
        let mut len = HEADER_LEN
            + text(&self.username)
            + text(&self.realm)
            + text(&self.nonce)
            + text(&self.software)
            + self
                .error
                .as_ref()
                .map_or(0, |e| attr_len(4 + e.reason.len()))
            + if self.unknown_attributes.is_empty() {
                0
            } else {
                attr_len(2 * self.unknown_attributes.len())
            }
            + self.xor_mapped_address.map_or(0, address_len)
            + self.alternate_server.map_or(0, address_len)
            + self.xor_relayed_address.map_or(0, address_len)
            + self
                .xor_peer_addresses
                .iter()
                .map(|a| address_len(*a))
                .sum::<usize>()
            + self.lifetime.map_or(0, |_| 8)
            + self.requested_transport.map_or(0, |_| 8)
            + self.requested_address_family.map_or(0, |_| 8)
            + self.even_port.map_or(0, |_| 8)
            + self.channel_number.map_or(0, |_| 8)
            + self.data.as_ref().map_or(0, |d| attr_len(d.len()));
        if with_integrity {
            len += 24;
        }
        if self.fingerprint {
            len += 8;
        }
        len
    }

    /// Writes the message into `buf`, with MESSAGE-INTEGRITY when `key` is given and
    /// FINGERPRINT when [`fingerprint`](Self::fingerprint) is set, and returns its length.
    ///
    /// Attribute order: USERNAME, REALM, NONCE (credentials first, as RFC 5769 prints them), the
    /// TURN attributes, ERROR-CODE, UNKNOWN-ATTRIBUTES, SOFTWARE, then the trailer.
    pub fn encode(&self, key: Option<&IntegrityKey>, buf: &mut [u8]) -> Result<usize, EncodeError> {
        use attribute_type as t;
        let needed = self.encoded_len(key.is_some());
        if needed - HEADER_LEN > usize::from(u16::MAX) {
            return Err(EncodeError::TooLong);
        }
        if needed > buf.len() {
            return Err(EncodeError::BufferTooSmall { needed });
        }
        let tid = self.transaction_id;
        let mut w = Writer {
            buf,
            len: HEADER_LEN,
        };
        if let Some(u) = &self.username {
            if u.len() > MAX_USERNAME_LEN {
                return Err(EncodeError::InvalidAttribute(t::USERNAME));
            }
            w.attr(t::USERNAME, &[u.as_bytes()]);
        }
        for (kind, value) in [(t::REALM, &self.realm), (t::NONCE, &self.nonce)] {
            if let Some(v) = value {
                if v.len() > MAX_TEXT_LEN {
                    return Err(EncodeError::InvalidAttribute(kind));
                }
                w.attr(kind, &[v.as_bytes()]);
            }
        }
        if let Some(family) = self.requested_address_family {
            w.attr(t::REQUESTED_ADDRESS_FAMILY, &[&[family.byte(), 0, 0, 0]]);
        }
        if let Some(reserve) = self.even_port {
            w.attr(t::EVEN_PORT, &[&[if reserve { 0x80 } else { 0 }]]);
        }
        if let Some(proto) = self.requested_transport {
            w.attr(t::REQUESTED_TRANSPORT, &[&[proto, 0, 0, 0]]);
        }
        if let Some(channel) = self.channel_number {
            let c = channel.to_be_bytes();
            w.attr(t::CHANNEL_NUMBER, &[&[c[0], c[1], 0, 0]]);
        }
        if let Some(lifetime) = self.lifetime {
            w.attr(t::LIFETIME, &[&lifetime.to_be_bytes()]);
        }
        for &peer in &self.xor_peer_addresses {
            w.address(t::XOR_PEER_ADDRESS, peer, &tid);
        }
        if let Some(a) = self.xor_relayed_address {
            w.address(t::XOR_RELAYED_ADDRESS, a, &tid);
        }
        if let Some(a) = self.xor_mapped_address {
            w.address(t::XOR_MAPPED_ADDRESS, a, &tid);
        }
        if let Some(data) = &self.data {
            w.attr(t::DATA, &[data]);
        }
        if let Some(e) = &self.error {
            // RFC 8489 §14.8: class (hundreds) in 3 bits, number (0–99) in 8; 300–699.
            if !(300..700).contains(&e.code) || e.reason.len() > MAX_TEXT_LEN {
                return Err(EncodeError::InvalidAttribute(t::ERROR_CODE));
            }
            let head = [0, 0, (e.code / 100) as u8, (e.code % 100) as u8];
            w.attr(t::ERROR_CODE, &[&head, e.reason.as_bytes()]);
        }
        if !self.unknown_attributes.is_empty() {
            let bytes: Vec<u8> = self
                .unknown_attributes
                .iter()
                .flat_map(|k| k.to_be_bytes())
                .collect();
            w.attr(t::UNKNOWN_ATTRIBUTES, &[&bytes]);
        }
        if let Some(a) = self.alternate_server {
            w.plain_address(t::ALTERNATE_SERVER, a);
        }
        if let Some(s) = &self.software {
            if s.len() > MAX_TEXT_LEN {
                return Err(EncodeError::InvalidAttribute(t::SOFTWARE));
            }
            w.attr(t::SOFTWARE, &[s.as_bytes()]);
        }
        let body = w.len;
        let buf = w.buf;
        buf[0..2].copy_from_slice(&message_type(self.class, self.method).to_be_bytes());
        buf[4..8].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
        buf[8..20].copy_from_slice(tid.as_bytes());
        let len = append_trailer(buf, body, key, self.fingerprint)?;
        debug_assert_eq!(len, needed);
        Ok(len)
    }

    /// The encoded message in a new `Vec`.
    pub fn to_bytes(&self, key: Option<&IntegrityKey>) -> Result<Vec<u8>, EncodeError> {
        let mut buf = vec![0u8; self.encoded_len(key.is_some())];
        let n = self.encode(key, &mut buf)?;
        buf.truncate(n);
        Ok(buf)
    }
}

/// Writes attributes after the header; the caller checked that they fit.
struct Writer<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl Writer<'_> {
    /// One attribute whose value is the concatenation of `parts`, zero-padded to 4 bytes
    /// (RFC 8489 §14).
    fn attr(&mut self, kind: u16, parts: &[&[u8]]) {
        let value_len: usize = parts.iter().map(|p| p.len()).sum();
        let start = self.len;
        self.buf[start..start + 2].copy_from_slice(&kind.to_be_bytes());
        // Callers bound every value below 64 KiB (encode checked the total).
        let l = u16::try_from(value_len).unwrap_or(u16::MAX);
        self.buf[start + 2..start + 4].copy_from_slice(&l.to_be_bytes());
        let mut at = start + 4;
        for p in parts {
            self.buf[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        let end = start + attr_len(value_len);
        self.buf[at..end].fill(0);
        self.len = end;
    }

    /// An XOR address attribute (RFC 8489 §14.2): family, port ^ the cookie's top 16 bits,
    /// address ^ cookie (IPv4) or ^ cookie ‖ transaction ID (IPv6).
    /// An address attribute as MAPPED-ADDRESS has it (RFC 8489 §14.1): family, port, address.
    fn plain_address(&mut self, kind: u16, addr: SocketAddr) {
        let port = addr.port().to_be_bytes();
        match addr.ip() {
            IpAddr::V4(ip) => self.attr(kind, &[&[0, 0x01, port[0], port[1]], &ip.octets()]),
            IpAddr::V6(ip) => self.attr(kind, &[&[0, 0x02, port[0], port[1]], &ip.octets()]),
        }
    }

    fn address(&mut self, kind: u16, addr: SocketAddr, tid: &TransactionId) {
        let port = (addr.port() ^ (MAGIC_COOKIE >> 16) as u16).to_be_bytes();
        let mask = xor_mask(tid);
        match addr.ip() {
            IpAddr::V4(ip) => {
                let mut x = ip.octets();
                x.iter_mut().zip(&mask).for_each(|(b, m)| *b ^= m);
                self.attr(kind, &[&[0, 0x01, port[0], port[1]], &x]);
            }
            IpAddr::V6(ip) => {
                let mut x = ip.octets();
                x.iter_mut().zip(&mask).for_each(|(b, m)| *b ^= m);
                self.attr(kind, &[&[0, 0x02, port[0], port[1]], &x]);
            }
        }
    }
}

/// The magic cookie followed by the transaction ID: what XOR addresses are masked with.
fn xor_mask(tid: &TransactionId) -> [u8; 16] {
    let mut mask = [0u8; 16];
    mask[..4].copy_from_slice(&MAGIC_COOKIE.to_be_bytes());
    mask[4..].copy_from_slice(tid.as_bytes());
    mask
}

/// Reads an XOR address value (RFC 8489 §14.2); `None` when malformed.
fn xor_address(v: &[u8], tid: &TransactionId) -> Option<SocketAddr> {
    let mask = xor_mask(tid);
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]) ^ (MAGIC_COOKIE >> 16) as u16;
    let ip = match (*v.get(1)?, v.len()) {
        (0x01, 8) => {
            let mut o = [0u8; 4];
            o.iter_mut()
                .zip(&v[4..8])
                .zip(&mask)
                .for_each(|((o, b), m)| *o = b ^ m);
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            o.iter_mut()
                .zip(&v[4..20])
                .zip(&mask)
                .for_each(|((o, b), m)| *o = b ^ m);
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Wire length of an attribute with a value of `value_len` bytes: header plus padded value.
const fn attr_len(value_len: usize) -> usize {
    4 + ((value_len + 3) & !3)
}

fn address_len(addr: SocketAddr) -> usize {
    if addr.is_ipv4() { 12 } else { 24 }
}

/// The 14-bit message type: method bits with the class bits at 8 and 4 (RFC 8489 §5, Figure 3).
fn message_type(class: Class, method: Method) -> u16 {
    let c: u16 = match class {
        Class::Request => 0b00,
        Class::Indication => 0b01,
        Class::SuccessResponse => 0b10,
        Class::ErrorResponse => 0b11,
    };
    let m = method.as_u16();
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 0b01) << 4) | ((c & 0b10) << 7)
}

#[cfg(test)]
mod tests;
