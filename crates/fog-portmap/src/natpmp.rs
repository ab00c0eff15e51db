//! NAT-PMP (RFC 6886): the wire format only.
//!
//! Requests go to the gateway's port 5351 (§3.1); answers have version 0 and the request's
//! opcode plus 128 (§3.2). Map responses do not carry the external address, so a client asks
//! for it separately with opcode 0 (§3.2).

use std::net::Ipv4Addr;

use crate::ParseError;

/// The gateway's port (§3.1).
pub const SERVER_PORT: u16 = 5351;
/// NAT-PMP's version number (§3.2).
pub const VERSION: u8 = 0;
/// Opcode of the external address request (§3.2).
pub const OP_EXTERNAL_ADDRESS: u8 = 0;
/// Opcode of a UDP mapping (§3.3).
pub const OP_MAP_UDP: u8 = 1;
/// Opcode of a TCP mapping (§3.3).
pub const OP_MAP_TCP: u8 = 2;
/// Added to the opcode in responses (§3.2).
const RESPONSE: u8 = 128;

/// A NAT-PMP result code (§3.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultCode(pub u16);

impl ResultCode {
    /// Success.
    pub const SUCCESS: Self = Self(0);

    /// The meaning RFC 6886 §3.5 gives this code.
    pub fn name(self) -> &'static str {
        match self.0 {
            0 => "Success",
            1 => "Unsupported Version",
            2 => "Not Authorized/Refused",
            3 => "Network Failure",
            4 => "Out of resources",
            5 => "Unsupported opcode",
            _ => "unknown",
        }
    }
}

/// A request (§3.2, §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// What is the external address? (§3.2)
    ExternalAddress,
    /// Create, renew (same ports) or delete (lifetime 0, §3.4) a mapping (§3.3).
    Map {
        /// [`OP_MAP_UDP`] or [`OP_MAP_TCP`].
        opcode: u8,
        /// The internal port.
        internal_port: u16,
        /// The external port wished for; 0 for any, and 0 when deleting (§3.4).
        suggested_port: u16,
        /// Requested lifetime in seconds (§3.3 recommends 7200).
        lifetime: u32,
    },
}

impl Request {
    /// Writes the request into `buf` (at least 12 bytes) and returns its length.
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        assert!(buf.len() >= 12, "buffer too short for a NAT-PMP request");
        match *self {
            Request::ExternalAddress => {
                buf[0] = VERSION;
                buf[1] = OP_EXTERNAL_ADDRESS;
                2
            }
            Request::Map {
                opcode,
                internal_port,
                suggested_port,
                lifetime,
            } => {
                // §3.3: version, opcode, 16 reserved bits, internal port, suggested external
                // port, lifetime.
                buf[0] = VERSION;
                buf[1] = opcode;
                buf[2..4].fill(0);
                buf[4..6].copy_from_slice(&internal_port.to_be_bytes());
                buf[6..8].copy_from_slice(&suggested_port.to_be_bytes());
                buf[8..12].copy_from_slice(&lifetime.to_be_bytes());
                12
            }
        }
    }

    /// Parses a request (fake servers in tests).
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        if bytes.len() < 2 {
            return Err(ParseError::Truncated);
        }
        if bytes[0] != VERSION {
            return Err(ParseError::Version(bytes[0]));
        }
        match bytes[1] {
            OP_EXTERNAL_ADDRESS => Ok(Request::ExternalAddress),
            opcode @ (OP_MAP_UDP | OP_MAP_TCP) if bytes.len() >= 12 => Ok(Request::Map {
                opcode,
                internal_port: u16::from_be_bytes([bytes[4], bytes[5]]),
                suggested_port: u16::from_be_bytes([bytes[6], bytes[7]]),
                lifetime: u32::from_be_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            }),
            OP_MAP_UDP | OP_MAP_TCP => Err(ParseError::Truncated),
            _ => Err(ParseError::NotAResponse),
        }
    }
}

/// A response (§3.2, §3.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Response {
    /// The answer to an external address request.
    ExternalAddress {
        /// Seconds since the gateway's mapping table was (re)started (§3.6).
        epoch: u32,
        /// The gateway's external address.
        ip: Ipv4Addr,
    },
    /// The answer to a map request.
    Map {
        /// The request's opcode.
        opcode: u8,
        /// Seconds since the gateway's mapping table was (re)started.
        epoch: u32,
        /// The internal port.
        internal_port: u16,
        /// The external port granted.
        external_port: u16,
        /// The lifetime granted, in seconds.
        lifetime: u32,
    },
    /// A non-zero result code, for the request of this opcode (§3.5). Some gateways send
    /// error responses shorter than the successful ones; only the first four bytes are read.
    Error {
        /// The request's opcode.
        opcode: u8,
        /// Why.
        result: ResultCode,
    },
}

impl Response {
    /// Parses a datagram from the gateway's port 5351.
    ///
    /// A PCP server's answer (version 2) is [`ParseError::Version`]`(2)`.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        // Nothing NAT-PMP sends is longer than 16 bytes; a PCP message is at most 1100.
        if bytes.len() > 1100 {
            return Err(ParseError::TooLong);
        }
        if bytes.len() < 4 {
            return Err(ParseError::Truncated);
        }
        if bytes[0] != VERSION {
            return Err(ParseError::Version(bytes[0]));
        }
        if bytes[1] < RESPONSE {
            return Err(ParseError::NotAResponse);
        }
        let opcode = bytes[1] - RESPONSE;
        let result = ResultCode(u16::from_be_bytes([bytes[2], bytes[3]]));
        if result != ResultCode::SUCCESS {
            return Ok(Response::Error { opcode, result });
        }
        let word = |at: usize| {
            u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        match opcode {
            OP_EXTERNAL_ADDRESS if bytes.len() >= 12 => Ok(Response::ExternalAddress {
                epoch: word(4),
                ip: Ipv4Addr::from(word(8)),
            }),
            OP_MAP_UDP | OP_MAP_TCP if bytes.len() >= 16 => Ok(Response::Map {
                opcode,
                epoch: word(4),
                internal_port: u16::from_be_bytes([bytes[8], bytes[9]]),
                external_port: u16::from_be_bytes([bytes[10], bytes[11]]),
                lifetime: word(12),
            }),
            OP_EXTERNAL_ADDRESS | OP_MAP_UDP | OP_MAP_TCP => Err(ParseError::Truncated),
            _ => Err(ParseError::UnknownOpcode(opcode)),
        }
    }

    /// Writes the response into `buf` (at least 16 bytes) and returns its length (fake
    /// servers in tests).
    pub fn emit(&self, buf: &mut [u8]) -> usize {
        assert!(buf.len() >= 16, "buffer too short for a NAT-PMP response");
        buf[0] = VERSION;
        match *self {
            Response::ExternalAddress { epoch, ip } => {
                buf[1] = RESPONSE + OP_EXTERNAL_ADDRESS;
                buf[2..4].fill(0);
                buf[4..8].copy_from_slice(&epoch.to_be_bytes());
                buf[8..12].copy_from_slice(&ip.octets());
                12
            }
            Response::Map {
                opcode,
                epoch,
                internal_port,
                external_port,
                lifetime,
            } => {
                buf[1] = RESPONSE + opcode;
                buf[2..4].fill(0);
                buf[4..8].copy_from_slice(&epoch.to_be_bytes());
                buf[8..10].copy_from_slice(&internal_port.to_be_bytes());
                buf[10..12].copy_from_slice(&external_port.to_be_bytes());
                buf[12..16].copy_from_slice(&lifetime.to_be_bytes());
                16
            }
            Response::Error { opcode, result } => {
                buf[1] = RESPONSE.wrapping_add(opcode);
                buf[2..4].copy_from_slice(&result.0.to_be_bytes());
                buf[4..8].fill(0);
                8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_layouts() {
        let mut buf = [0xee; 16];
        assert_eq!(Request::ExternalAddress.emit(&mut buf), 2);
        assert_eq!(&buf[..2], &[0, 0]);
        let map = Request::Map {
            opcode: OP_MAP_UDP,
            internal_port: 4000,
            suggested_port: 4001,
            lifetime: 7200,
        };
        assert_eq!(map.emit(&mut buf), 12);
        assert_eq!(
            &buf[..12],
            &[0, 1, 0, 0, 0x0f, 0xa0, 0x0f, 0xa1, 0, 0, 0x1c, 0x20]
        );
        assert_eq!(Request::parse(&buf[..12]), Ok(map));
    }

    #[test]
    fn responses() {
        // RFC 6886 §3.2's layout: 0, 128, result 0, epoch, address.
        let bytes = [0, 128, 0, 0, 0, 0, 0, 9, 11, 0, 0, 1];
        assert_eq!(
            Response::parse(&bytes),
            Ok(Response::ExternalAddress {
                epoch: 9,
                ip: Ipv4Addr::new(11, 0, 0, 1)
            })
        );
        assert_eq!(Response::parse(&bytes[..8]), Err(ParseError::Truncated));
        let map = [
            0, 129, 0, 0, 0, 0, 0, 9, 0x0f, 0xa0, 0x9c, 0x40, 0, 0, 0x0e, 0x10,
        ];
        assert_eq!(
            Response::parse(&map),
            Ok(Response::Map {
                opcode: 1,
                epoch: 9,
                internal_port: 4000,
                external_port: 40000,
                lifetime: 3600
            })
        );
        assert_eq!(
            Response::parse(&[0, 129, 0, 3]),
            Ok(Response::Error {
                opcode: 1,
                result: ResultCode(3)
            })
        );
        assert_eq!(
            Response::parse(&[2, 129, 0, 0]),
            Err(ParseError::Version(2))
        );
        assert_eq!(
            Response::parse(&[0, 1, 0, 0]),
            Err(ParseError::NotAResponse)
        );
        let mut buf = [0; 16];
        for r in [
            Response::parse(&bytes).unwrap(),
            Response::parse(&map).unwrap(),
        ] {
            let n = r.emit(&mut buf);
            assert_eq!(Response::parse(&buf[..n]), Ok(r));
        }
    }
}
