//! `fog_core::classify` on arbitrary datagrams.
//!
//! Input layout: the low bit of the first byte is `from_turn_server`, the rest is the datagram. An
//! empty input classifies the empty datagram both ways.
//!
//! Besides "never panics", it checks the promises `classify` documents: no handler is given a
//! header shorter than its protocol's minimum, only the 64–79 range depends on where the datagram
//! came from, and our framing round-trips byte for byte.

#![no_main]

use fog_core::{Protocol, classify};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&flags, datagram)) = data.split_first() else {
        assert_eq!(classify(&[], false), Protocol::Unknown);
        assert_eq!(classify(&[], true), Protocol::Unknown);
        return;
    };
    let from_turn_server = flags & 1 == 1;
    let protocol = classify(datagram, from_turn_server);
    let first = datagram.first().copied();

    // RFC 9443 §3: only 64–79 is ambiguous between ChannelData and QUIC.
    if !matches!(first, Some(64..=79)) {
        assert_eq!(protocol, classify(datagram, !from_turn_server));
    }

    // Minimum header lengths, the same figures the module docs cite.
    let len = datagram.len();
    match protocol {
        Protocol::Stun => assert!(len >= 20, "STUN header is 20 bytes (RFC 8489 §5)"),
        Protocol::Dtls => assert!(len >= 13, "DTLS record header is 13 bytes (RFC 6347 §4.1)"),
        Protocol::ChannelData => {
            assert!(
                from_turn_server,
                "ChannelData only comes from our TURN server"
            );
            assert!(len >= 4, "ChannelData header is 4 bytes (RFC 8656 §12.4)");
        }
        Protocol::Quic if first >= Some(192) => {
            assert!(
                len >= 5,
                "QUIC long header names a version (RFC 9000 §17.2)"
            );
        }
        Protocol::Fog(framing) => {
            let inner = framing
                .unframe(datagram)
                .expect("a datagram classified as framed must unframe");
            let mut buf = vec![0u8; len];
            let n = framing
                .frame(inner, &mut buf)
                .expect("buffer of the input's length fits");
            assert_eq!(
                &buf[..n],
                datagram,
                "re-framing must reproduce the datagram"
            );
            assert_eq!(framing.frame(inner, &mut buf[..len - 1]), None);
        }
        _ => {}
    }
});
