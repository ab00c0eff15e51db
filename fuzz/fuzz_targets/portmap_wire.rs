//! `fog_portmap`'s datagram parsers on arbitrary bytes: PCP and NAT-PMP responses (and the
//! requests the fake routers read), SSDP search responses.
//!
//! Input: the datagram. Besides "never panics", whatever parses re-emits to bytes that parse
//! to the same value.

#![no_main]

use fog_portmap::{natpmp, pcp, ssdp};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(response) = pcp::Response::parse(data) {
        let mut buf = [0u8; pcp::MAP_LEN];
        let n = response.emit(&mut buf);
        assert_eq!(pcp::Response::parse(&buf[..n]), Ok(response));
    }
    if let Ok(request) = pcp::parse_map_request(data) {
        let mut buf = [0u8; pcp::MAP_LEN];
        let n = request.emit(&mut buf);
        assert_eq!(pcp::parse_map_request(&buf[..n]), Ok(request));
    }
    if let Ok(response) = natpmp::Response::parse(data) {
        let mut buf = [0u8; 16];
        let n = response.emit(&mut buf);
        assert_eq!(natpmp::Response::parse(&buf[..n]), Ok(response));
    }
    if let Ok(request) = natpmp::Request::parse(data) {
        let mut buf = [0u8; 16];
        let n = request.emit(&mut buf);
        assert_eq!(natpmp::Request::parse(&buf[..n]), Ok(request));
    }
    if let Ok(answer) = ssdp::SearchResponse::parse(data) {
        assert!(answer.location.len() <= data.len());
        let _ = fog_portmap::http::Url::parse(&answer.location);
    }
});
