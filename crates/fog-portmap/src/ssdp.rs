//! SSDP discovery of an Internet Gateway Device (UPnP Device Architecture 1.1, §1.3).
//!
//! The client multicasts an `M-SEARCH` (§1.3.2) to 239.255.255.250:1900; each matching device
//! answers with a unicast HTTP-over-UDP response whose `LOCATION` header is the URL of its
//! description (§1.3.3).

use std::net::{Ipv4Addr, SocketAddrV4};

use crate::ParseError;

/// SSDP's multicast group and port (UDA 1.1 §1.3).
pub const MULTICAST: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 255, 250), 1900);

/// The search targets we ask for: IGD version 1 and 2 devices (UDA 1.1 §1.3.2: a device
/// answers a search for an older version of its type too, but IGD:2 routers in the field do
/// not always).
pub const SEARCH_TARGETS: [&str; 2] = [
    "urn:schemas-upnp-org:device:InternetGatewayDevice:1",
    "urn:schemas-upnp-org:device:InternetGatewayDevice:2",
];

/// The longest SSDP response we read; they are a few hundred bytes.
pub const MAX_RESPONSE: usize = 2048;

/// Writes an M-SEARCH for `target` with `MX` seconds (UDA 1.1 §1.3.2) into `buf`, returning
/// its length, or `None` when `buf` is too short.
pub fn emit_search(target: &str, mx: u8, buf: &mut [u8]) -> Option<usize> {
    let text = format!(
        "M-SEARCH * HTTP/1.1\r\nHOST: 239.255.255.250:1900\r\nMAN: \"ssdp:discover\"\r\nMX: {mx}\r\nST: {target}\r\n\r\n"
    );
    let out = buf.get_mut(..text.len())?;
    out.copy_from_slice(text.as_bytes());
    Some(text.len())
}

/// The part of a search response we use (UDA 1.1 §1.3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchResponse {
    /// The description's URL.
    pub location: String,
    /// The search target it answers (`ST`).
    pub target: String,
}

impl SearchResponse {
    /// Parses an M-SEARCH response; anything else (another device's NOTIFY, a non-200 status,
    /// no LOCATION) is an error.
    pub fn parse(bytes: &[u8]) -> Result<Self, ParseError> {
        if bytes.len() > MAX_RESPONSE {
            return Err(ParseError::TooLong);
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(bytes) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => return Err(ParseError::Truncated),
            Err(_) => return Err(ParseError::Http),
        }
        if response.code != Some(200) {
            return Err(ParseError::Status(response.code.unwrap_or(0)));
        }
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
                .map(|v| v.trim().to_owned())
        };
        let location = header("location").ok_or(ParseError::Missing("LOCATION"))?;
        let target = header("st").unwrap_or_default();
        Ok(Self { location, target })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_and_response() {
        let mut buf = [0; 512];
        let n = emit_search(SEARCH_TARGETS[0], 1, &mut buf).unwrap();
        let text = std::str::from_utf8(&buf[..n]).unwrap();
        assert!(text.starts_with("M-SEARCH * HTTP/1.1\r\n"));
        assert!(text.contains("MAN: \"ssdp:discover\"\r\n"));
        assert!(text.contains("ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n"));
        assert!(text.ends_with("\r\n\r\n"));
        assert_eq!(emit_search(SEARCH_TARGETS[0], 1, &mut [0; 10]), None);

        let answer = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nlocation: http://192.168.1.1:5000/rootDesc.xml \r\n\
ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nUSN: uuid:x::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n";
        let parsed = SearchResponse::parse(answer).unwrap();
        assert_eq!(parsed.location, "http://192.168.1.1:5000/rootDesc.xml");
        assert_eq!(parsed.target, SEARCH_TARGETS[0]);
        assert_eq!(
            SearchResponse::parse(b"HTTP/1.1 200 OK\r\nST: x\r\n\r\n"),
            Err(ParseError::Missing("LOCATION"))
        );
        assert_eq!(
            SearchResponse::parse(b"NOTIFY * HTTP/1.1\r\nLOCATION: x\r\n\r\n"),
            Err(ParseError::Http)
        );
        assert_eq!(
            SearchResponse::parse(b"HTTP/1.1 200 OK\r\nLOCATION: x\r\n"),
            Err(ParseError::Truncated)
        );
    }
}
