//! PCP (RFC 6887) MAP requests and responses: the wire format only.
//!
//! A request is the common header (§7.1) and the MAP opcode's data (§11.1), 60 bytes; a
//! response is the common response header (§7.2) and, for MAP, the same layout of opcode data
//! (§11.1) with the assigned external port and address. Options are neither sent nor read
//! (a MAP without FILTER or PREFER_FAILURE needs none, §11.1).

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::ParseError;

/// The server's UDP port (§19.1): the same as NAT-PMP's.
pub const SERVER_PORT: u16 = 5351;
/// The protocol version this client speaks (§7, §9).
pub const VERSION: u8 = 2;
/// The MAP opcode (§19.2).
pub const OPCODE_MAP: u8 = 1;
/// The R bit of the second byte: set in responses (§7.2).
const RESPONSE_BIT: u8 = 0x80;
/// The largest PCP message (§7): a longer datagram is not PCP.
pub const MAX_MESSAGE: usize = 1100;
/// A MAP request or response without options: 24 bytes of header plus 36 of MAP data.
pub const MAP_LEN: usize = 60;
/// IANA protocol numbers (§11.1 "Protocol").
pub const PROTO_UDP: u8 = 17;
/// TCP's IANA protocol number.
pub const PROTO_TCP: u8 = 6;

/// An IPv4 address as PCP carries it: IPv4-mapped IPv6 (§5).
pub fn mapped(ip: Ipv4Addr) -> Ipv6Addr {
    ip.to_ipv6_mapped()
}

/// A PCP result code (§7.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultCode(pub u8);

impl ResultCode {
    /// SUCCESS.
    pub const SUCCESS: Self = Self(0);
    /// UNSUPP_VERSION: the server speaks another version (§9).
    pub const UNSUPP_VERSION: Self = Self(1);
    /// NOT_AUTHORIZED.
    pub const NOT_AUTHORIZED: Self = Self(2);
    /// NETWORK_FAILURE: the server has no external address now (§7.4).
    pub const NETWORK_FAILURE: Self = Self(7);
    /// NO_RESOURCES.
    pub const NO_RESOURCES: Self = Self(8);

    /// The name RFC 6887 §7.4 gives this code.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "SUCCESS",
            1 => "UNSUPP_VERSION",
            2 => "NOT_AUTHORIZED",
            3 => "MALFORMED_REQUEST",
            4 => "UNSUPP_OPCODE",
            5 => "UNSUPP_OPTION",
            6 => "MALFORMED_OPTION",
            7 => "NETWORK_FAILURE",
            8 => "NO_RESOURCES",
            9 => "UNSUPP_PROTOCOL",
            10 => "USER_EX_QUOTA",
            11 => "CANNOT_PROVIDE_EXTERNAL",
            12 => "ADDRESS_MISMATCH",
            13 => "EXCESSIVE_REMOTE_PEERS",
            _ => "unknown",
        }
    }
}

/// A MAP request (§7.1 header, §11.1 opcode data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapRequest {
    /// Requested lifetime in seconds; 0 deletes the mapping (§15).
    pub lifetime: u32,
    /// The client's own address, as the server will see it as source (§7.1, §8.1).
    pub client: Ipv6Addr,
    /// The mapping nonce (§11.1): renewals and deletes repeat it.
    pub nonce: [u8; 12],
    /// IANA protocol number.
    pub protocol: u8,
    /// The internal port to map.
    pub internal_port: u16,
    /// The external port wished for, 0 for none.
    pub suggested_port: u16,
    /// The external address wished for; the all-zeros address of the family for none (§11.1).
    pub suggested_ip: Ipv6Addr,
}

impl MapRequest {
    /// Writes the request into `buf` and returns its length, [`MAP_LEN`].
    ///
    /// # Panics
    ///
    /// If `buf` is shorter than [`MAP_LEN`] (a caller's precondition).
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        assert!(
            buf.len() >= MAP_LEN,
            "buffer too short for a PCP MAP request"
        );
        let b = &mut buf[..MAP_LEN];
        b.fill(0);
        // §7.1: version, R=0 and opcode, 16 reserved bits, lifetime, client address.
        b[0] = VERSION;
        b[1] = OPCODE_MAP;
        b[4..8].copy_from_slice(&self.lifetime.to_be_bytes());
        b[8..24].copy_from_slice(&self.client.octets());
        // §11.1: nonce, protocol, 24 reserved bits, internal port, suggested port and address.
        b[24..36].copy_from_slice(&self.nonce);
        b[36] = self.protocol;
        b[40..42].copy_from_slice(&self.internal_port.to_be_bytes());
        b[42..44].copy_from_slice(&self.suggested_port.to_be_bytes());
        b[44..60].copy_from_slice(&self.suggested_ip.octets());
        MAP_LEN
    }
}

/// The MAP data of a response (§11.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MapData {
    /// The nonce of the request it answers.
    pub nonce: [u8; 12],
    /// IANA protocol number.
    pub protocol: u8,
    /// The internal port.
    pub internal_port: u16,
    /// The assigned external port.
    pub external_port: u16,
    /// The assigned external address.
    pub external_ip: Ipv6Addr,
}

/// A PCP response (§7.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Response {
    /// The opcode it answers.
    pub opcode: u8,
    /// The result.
    pub result: ResultCode,
    /// Granted lifetime (success) or how long the error is expected to last (§7.2, §15).
    pub lifetime: u32,
    /// The server's epoch (§8.5).
    pub epoch: u32,
    /// MAP data, when the opcode is MAP and the response carries it (error responses from
    /// some servers are header-only).
    pub map: Option<MapData>,
}

impl Response {
    /// Parses a datagram from the server.
    ///
    /// A NAT-PMP server answers a PCP request with version 0 (§9); that is
    /// [`ParseError::Version`]`(0)`, which the caller reads as "PCP unsupported here".
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        if bytes.len() > MAX_MESSAGE {
            return Err(ParseError::TooLong);
        }
        if bytes.len() >= 2 && bytes[0] != VERSION {
            return Err(ParseError::Version(bytes[0]));
        }
        if bytes.len() < 24 {
            return Err(ParseError::Truncated);
        }
        // §7: "All PCP messages ... are a multiple of 4 octets"; servers in the field honour it,
        // but one that does not is still understood.
        if bytes[1] & RESPONSE_BIT == 0 {
            return Err(ParseError::NotAResponse);
        }
        let opcode = bytes[1] & !RESPONSE_BIT;
        let result = ResultCode(bytes[3]);
        let lifetime = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        let epoch = u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
        let map = if opcode == OPCODE_MAP && bytes.len() >= MAP_LEN {
            let mut nonce = [0; 12];
            nonce.copy_from_slice(&bytes[24..36]);
            let mut ip = [0; 16];
            ip.copy_from_slice(&bytes[44..60]);
            Some(MapData {
                nonce,
                protocol: bytes[36],
                internal_port: u16::from_be_bytes([bytes[40], bytes[41]]),
                external_port: u16::from_be_bytes([bytes[42], bytes[43]]),
                external_ip: Ipv6Addr::from(ip),
            })
        } else if opcode == OPCODE_MAP && result == ResultCode::SUCCESS {
            return Err(ParseError::Truncated);
        } else {
            None
        };
        Ok(Self {
            opcode,
            result,
            lifetime,
            epoch,
            map,
        })
    }

    /// Writes a response (for tests and fake servers): header, then MAP data if any.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        let len = if self.map.is_some() { MAP_LEN } else { 24 };
        assert!(buf.len() >= len, "buffer too short for a PCP response");
        let b = &mut buf[..len];
        b.fill(0);
        b[0] = VERSION;
        b[1] = RESPONSE_BIT | self.opcode;
        b[3] = self.result.0;
        b[4..8].copy_from_slice(&self.lifetime.to_be_bytes());
        b[8..12].copy_from_slice(&self.epoch.to_be_bytes());
        if let Some(m) = &self.map {
            b[24..36].copy_from_slice(&m.nonce);
            b[36] = m.protocol;
            b[40..42].copy_from_slice(&m.internal_port.to_be_bytes());
            b[42..44].copy_from_slice(&m.external_port.to_be_bytes());
            b[44..60].copy_from_slice(&m.external_ip.octets());
        }
        len
    }
}

/// Parses a MAP request (for fake servers in tests and fuzzing the round trip).
pub fn parse_map_request(bytes: &[u8]) -> Result<MapRequest, ParseError> {
    if bytes.len() < MAP_LEN {
        return Err(ParseError::Truncated);
    }
    if bytes[0] != VERSION {
        return Err(ParseError::Version(bytes[0]));
    }
    if bytes[1] != OPCODE_MAP {
        return Err(ParseError::NotAResponse);
    }
    let mut client = [0; 16];
    client.copy_from_slice(&bytes[8..24]);
    let mut nonce = [0; 12];
    nonce.copy_from_slice(&bytes[24..36]);
    let mut ip = [0; 16];
    ip.copy_from_slice(&bytes[44..60]);
    Ok(MapRequest {
        lifetime: u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
        client: Ipv6Addr::from(client),
        nonce,
        protocol: bytes[36],
        internal_port: u16::from_be_bytes([bytes[40], bytes[41]]),
        suggested_port: u16::from_be_bytes([bytes[42], bytes[43]]),
        suggested_ip: Ipv6Addr::from(ip),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_request_layout() {
        let request = MapRequest {
            lifetime: 7200,
            client: mapped(Ipv4Addr::new(192, 168, 1, 2)),
            nonce: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12],
            protocol: PROTO_UDP,
            internal_port: 4000,
            suggested_port: 4000,
            suggested_ip: mapped(Ipv4Addr::UNSPECIFIED),
        };
        let mut buf = [0xff; 80];
        assert_eq!(request.emit(&mut buf), 60);
        let expected = "0201 0000 00001c20 00000000000000000000ffffc0a80102 \
                        0102030405060708090a0b0c 11 000000 0fa0 0fa0 00000000000000000000ffff00000000";
        let hex: String = buf[..60].iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, expected.replace(' ', ""));
        assert_eq!(parse_map_request(&buf[..60]), Ok(request));
    }

    #[test]
    fn response_round_trip_and_errors() {
        let response = Response {
            opcode: OPCODE_MAP,
            result: ResultCode::SUCCESS,
            lifetime: 3600,
            epoch: 42,
            map: Some(MapData {
                nonce: [7; 12],
                protocol: PROTO_UDP,
                internal_port: 4000,
                external_port: 40000,
                external_ip: mapped(Ipv4Addr::new(11, 0, 0, 1)),
            }),
        };
        let mut buf = [0; 60];
        let n = response.emit(&mut buf);
        assert_eq!(Response::parse(&buf[..n]), Ok(response));
        assert_eq!(Response::parse(&buf[..30]), Err(ParseError::Truncated));
        // A NAT-PMP server's "unsupported version" answer (RFC 6886 §3.5).
        assert_eq!(
            Response::parse(&[0, 129, 0, 1, 0, 0, 0, 5]),
            Err(ParseError::Version(0))
        );
        // Header-only error response.
        let mut short = [0u8; 24];
        short[0] = 2;
        short[1] = 0x81;
        short[3] = 8;
        let parsed = Response::parse(&short).unwrap();
        assert_eq!(parsed.result, ResultCode::NO_RESOURCES);
        assert_eq!(parsed.map, None);
        // The request itself (R bit clear) is not a response.
        buf[1] = OPCODE_MAP;
        assert_eq!(Response::parse(&buf), Err(ParseError::NotAResponse));
        assert_eq!(Response::parse(&[0; 1101]), Err(ParseError::TooLong));
    }
}
