//! The `fog_stun` server machine fed arbitrary datagrams from arbitrary sources on any of its
//! addresses, drained after each one, as a driver would.
//!
//! Invariants after every datagram: at most one answer; it is never more than
//! `MAX_AMPLIFICATION` bytes longer than the datagram (PADDING or not) nor longer than
//! `MAX_RESPONSE_LEN`; it leaves from one of the server's addresses, goes to the sender's IP (and
//! port, unless the request named a RESPONSE-PORT), and is a Binding response with the request's
//! transaction ID. Every datagram is counted exactly once in the stats.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_core::{Receive, SansIo};
use fog_stun::server::{
    MAX_AMPLIFICATION, MAX_RESPONSE_LEN, RateLimit, Server, ServerConfig, ServerEvent, ServerStats,
};
use fog_stun::wire::{BindingResponse, ChangeRequest, Cookie, Message, TransactionId};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Config {
    ipv6: bool,
    alternate_ip: bool,
    alternate_port: bool,
    /// `None`: no rate limit; otherwise a small table so eviction is reached.
    rate: Option<(u8, u8, u8)>,
    /// Use a small transmit buffer, so that oversized answers are reported.
    small_buffer: Option<u16>,
}

#[derive(Debug, Arbitrary)]
enum Payload {
    /// Any bytes.
    Raw(Vec<u8>),
    /// A Binding request built from parts, so the interesting paths are reached quickly.
    Request {
        id: [u8; 12],
        classic: Option<[u8; 4]>,
        change: Option<(bool, bool)>,
        response_port: Option<u16>,
        padding: Option<u16>,
        fingerprint: bool,
        username: bool,
        /// Raw attributes appended after the typed ones (unknown types reach the 420 path).
        extra: Vec<(u16, Vec<u8>)>,
    },
}

#[derive(Debug, Arbitrary)]
struct Datagram {
    from_host: u8,
    from_port: u16,
    /// Index into the server's local addresses; out of range means an address not ours.
    local: u8,
    advance_ms: u16,
    payload: Payload,
}

#[derive(Debug, Arbitrary)]
struct Input {
    config: Config,
    datagrams: Vec<Datagram>,
}

fn build(payload: Payload) -> Vec<u8> {
    let (id, classic, change, response_port, padding, fingerprint, username, extra) = match payload
    {
        Payload::Raw(bytes) => return bytes,
        Payload::Request {
            id,
            classic,
            change,
            response_port,
            padding,
            fingerprint,
            username,
            extra,
        } => (
            id,
            classic,
            change,
            response_port,
            padding,
            fingerprint,
            username,
            extra,
        ),
    };
    let mut message = Message::new(
        fog_stun::wire::Class::Request,
        fog_stun::wire::Method::BINDING,
        TransactionId::new(id),
    );
    if let Some(c) = classic {
        message.cookie = Cookie::Classic(c);
    }
    let classic = message.cookie != Cookie::Magic;
    let a = &mut message.attributes;
    a.change_request = change.map(|(change_ip, change_port)| ChangeRequest {
        change_ip,
        change_port,
    });
    a.response_port = response_port;
    // Keep the room for the extra attributes below.
    a.padding = padding.map(|p| p.min(60_000));
    if username {
        a.username = Some("fuzz".to_owned());
    }
    message.fingerprint = fingerprint && !classic;
    let Ok(mut bytes) = message.to_bytes(None) else {
        return Vec::new();
    };
    // Raw attributes go at the end: after a FINGERPRINT they make the message invalid
    // (FINGERPRINT not last), otherwise they reach the unknown-attribute and value paths.
    for (kind, value) in extra.into_iter().take(8) {
        let value = &value[..value.len().min(64)];
        bytes.extend_from_slice(&kind.to_be_bytes());
        bytes.extend_from_slice(&(value.len() as u16).to_be_bytes());
        bytes.extend_from_slice(value);
        bytes.resize(bytes.len() + (4 - value.len() % 4) % 4, 0);
    }
    let len = (bytes.len() - 20) as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    bytes
}

fn total(s: &ServerStats) -> u64 {
    s.answered
        + s.error_responses
        + s.malformed
        + s.not_binding
        + s.rate_limited
        + s.rate_table_full
        + s.unknown_local
        + s.queue_full
}

fuzz_target!(|input: Input| {
    let c = input.config;
    let (primary, alternate, host): (SocketAddr, IpAddr, fn(u8) -> IpAddr) = if c.ipv6 {
        (
            "[2001:db8::1]:3478".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
            |h| {
                IpAddr::V6(Ipv6Addr::new(
                    0x2001,
                    0xdb8,
                    0xffff,
                    u16::from(h),
                    0,
                    0,
                    0,
                    1,
                ))
            },
        )
    } else {
        (
            "192.0.2.1:3478".parse().unwrap(),
            "192.0.2.2".parse().unwrap(),
            |h| IpAddr::V4(Ipv4Addr::new(198, 51, 100, h)),
        )
    };
    let config = ServerConfig {
        alternate_ip: c.alternate_ip.then_some(alternate),
        alternate_port: c.alternate_port.then_some(3479),
        rate_limit: c.rate.map(|(per_second, burst, max_sources)| RateLimit {
            per_second: u32::from(per_second).max(1),
            burst: u32::from(burst).max(1),
            max_sources: usize::from(max_sources).max(1),
        }),
        ..ServerConfig::new(primary)
    };
    let locals = config.local_addrs();
    let mut server = Server::new(config);
    let mut buf = vec![0u8; c.small_buffer.map_or(65_535, usize::from)];
    let mut now = Instant::now();
    let mut too_large = 0u64;

    for datagram in input.datagrams {
        now += Duration::from_millis(u64::from(datagram.advance_ms));
        let source = SocketAddr::new(host(datagram.from_host), datagram.from_port);
        let local = locals
            .get(usize::from(datagram.local))
            .copied()
            .unwrap_or_else(|| SocketAddr::new(primary.ip(), 9));
        let payload = build(datagram.payload);
        let request = Message::decode(&payload).ok();

        let before = total(server.stats());
        let packet = Receive {
            source,
            local,
            payload: &payload,
        };
        let _ = server.accepts(&packet);
        server.handle_packet(now, packet);
        assert_eq!(
            total(server.stats()),
            before + 1,
            "every datagram counted once"
        );

        let mut answers = 0;
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            answers += 1;
            assert!(t.len <= buf.len());
            assert!(
                t.len <= payload.len() + MAX_AMPLIFICATION,
                "{} byte answer to {} bytes",
                t.len,
                payload.len()
            );
            assert!(t.len <= MAX_RESPONSE_LEN);
            assert!(t.source.is_some_and(|s| locals.contains(&s)));
            assert_eq!(t.destination.ip(), source.ip());
            let request = request.as_ref().expect("only valid STUN is answered");
            if t.destination.port() != source.port() {
                assert_eq!(request.attributes.response_port, Some(t.destination.port()));
            }
            let response = BindingResponse::decode(&buf[..t.len])
                .expect("answers are valid STUN")
                .expect("answers are Binding responses");
            assert_eq!(response.transaction_id, request.transaction_id);
            assert_eq!(response.cookie, request.cookie);
        }
        while let Some(event) = server.poll_event() {
            let ServerEvent::ResponseTooLarge { needed, .. } = event;
            assert!(needed > buf.len());
            too_large += 1;
        }
        assert!(answers <= 1);
        assert_eq!(server.poll_timeout(), None);
    }
    assert_eq!(server.stats().buffer_too_small, too_large);
});
