//! `fog_portmap`'s HTTP response reader and its XML parsers (device description, SOAP) on
//! arbitrary bytes.
//!
//! Input: byte 0 picks where the response is split into two reads; the rest is what the router
//! sent on the connection. Invariants: nothing panics; the reader refuses more than its cap;
//! feeding in two pieces gives what one piece gives; a parsed description's control URL
//! joins without panicking.

#![no_main]

use fog_portmap::http::{self, ResponseReader, Url};
use fog_portmap::igd::{Description, SoapResponse};
use libfuzzer_sys::fuzz_target;

const CAP: usize = 16 * 1024;

fuzz_target!(|data: &[u8]| {
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let whole = if bytes.len() > CAP {
        Err(fog_portmap::ParseError::TooLong)
    } else {
        http::parse_response(bytes, true)
    };
    let at = usize::from(split).min(bytes.len());
    let mut reader = ResponseReader::new(CAP);
    let first = reader.push(&bytes[..at], false);
    let complete_early = matches!(first, Ok(Some(_)));
    let first_failed = first.is_err();
    if !complete_early && !first_failed {
        // Not yet complete after the first piece: both reads together say what one says.
        assert_eq!(reader.push(&bytes[at..], true), whole);
    } else if first_failed && bytes.len() <= CAP {
        // Bytes that are wrong so far stay wrong.
        assert!(whole.is_err(), "{first:?} vs {whole:?}");
    }
    let base = Url::parse("http://192.168.1.1:5000/rootDesc.xml").expect("a valid base");
    for body in [Some(bytes), whole.ok().flatten().map(|r| r.body).as_deref()]
        .into_iter()
        .flatten()
    {
        if let Ok(description) = Description::parse(body) {
            if let Some(service) = description.wan_service() {
                let _ = base.join(&service.control_url);
            }
            if let Some(url_base) = &description.url_base {
                let _ = Url::parse(url_base);
            }
        }
        if let Ok(soap) = SoapResponse::parse(body) {
            let _ = soap.value("NewExternalIPAddress");
        }
    }
});
