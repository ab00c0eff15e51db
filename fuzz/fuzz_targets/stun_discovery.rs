//! The discovery machine fed arbitrary answers: raw bytes, or Binding responses built from parts
//! that carry the transaction ID of a request it really sent (so that the deep paths are reached),
//! from any of the server's addresses or a stranger, on any local port, at any time.
//!
//! Invariants: nothing panics; every datagram lands in exactly one stats counter; the machine
//! never asks to be woken in the past; once `Done` is reported it stays done.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_core::{Receive, SansIo};
use fog_stun::discovery::{Discovery, DiscoveryConfig, Event};
use fog_stun::wire::{BindingResponse, Cookie, TransactionId};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Config {
    seed: u64,
    port_samples: u8,
    hairpinning: bool,
    lifetime_ms: Option<u16>,
}

#[derive(Debug, Arbitrary)]
enum Payload {
    Raw(Vec<u8>),
    Response {
        /// Answer the n-th request sent so far (modulo), or make up an ID.
        answer: Option<u8>,
        made_up: [u8; 12],
        xor_mapped: Option<(u8, u16)>,
        mapped: Option<(u8, u16)>,
        other: Option<(u8, u16)>,
        origin: Option<(u8, u16)>,
        error: Option<u16>,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    from: u8,
    from_port: u16,
    local_offset: u8,
    advance_ms: u16,
    payload: Payload,
}

const SERVER: [Ipv4Addr; 2] = [
    Ipv4Addr::new(198, 51, 100, 1),
    Ipv4Addr::new(198, 51, 100, 2),
];

fn ip(pick: u8) -> IpAddr {
    match pick % 4 {
        0 | 1 => IpAddr::V4(SERVER[usize::from(pick % 2)]),
        2 => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10)),
        _ => IpAddr::V4(Ipv4Addr::new(203, 0, 113, pick)),
    }
}

fn sock(pick: (u8, u16)) -> SocketAddr {
    SocketAddr::new(ip(pick.0), pick.1)
}

fuzz_target!(|input: (Config, Vec<Input>)| {
    let (c, inputs) = input;
    let server = SocketAddr::new(IpAddr::V4(SERVER[0]), 3478);
    let mut config = DiscoveryConfig::new(server, c.seed);
    config.local_ip = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 10));
    // One sample is a caller error (`Discovery::new` asserts it); 0 turns the test off.
    config.port_samples = match c.port_samples % 12 {
        1 => 0,
        n => u16::from(n),
    };
    config.hairpinning = c.hairpinning;
    config.lifetime = c.lifetime_ms.map(|ms| Duration::from_millis(u64::from(ms)));
    let first_port = config.first_port;
    let mut d = Discovery::new(config);
    // The machine never reads a clock; any base instant will do.
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let mut now = start;
    d.start(now);
    let mut sent: Vec<TransactionId> = Vec::new();
    let mut buf = vec![0u8; 65_535];
    let mut done = false;
    let mut drain =
        |d: &mut Discovery, now: Instant, sent: &mut Vec<TransactionId>, done: &mut bool| {
            while let Some(t) = d.poll_transmit(now, &mut buf) {
                if t.len >= 20 {
                    let mut id = [0u8; 12];
                    id.copy_from_slice(&buf[8..20]);
                    sent.push(TransactionId::new(id));
                }
            }
            while let Some(event) = d.poll_event() {
                assert!(!*done, "nothing after Done: {event:?}");
                *done = matches!(event, Event::Done(_));
            }
            if let Some(t) = d.poll_timeout() {
                assert!(t >= now || *done, "a wake-up in the past");
            }
        };
    drain(&mut d, now, &mut sent, &mut done);
    for input in inputs.into_iter().take(200) {
        now += Duration::from_millis(u64::from(input.advance_ms % 2000));
        if d.poll_timeout().is_some_and(|t| t <= now) {
            d.handle_timeout(now);
            drain(&mut d, now, &mut sent, &mut done);
        }
        let bytes = match input.payload {
            Payload::Raw(bytes) => bytes,
            Payload::Response {
                answer,
                made_up,
                xor_mapped,
                mapped,
                other,
                origin,
                error,
            } => {
                let id = match answer {
                    Some(n) if !sent.is_empty() => sent[usize::from(n) % sent.len()],
                    _ => TransactionId::new(made_up),
                };
                let mut r = BindingResponse::from_message(fog_stun::wire::Message::new(
                    fog_stun::wire::Class::SuccessResponse,
                    fog_stun::wire::Method::BINDING,
                    id,
                ))
                .expect("a Binding response");
                r.cookie = Cookie::Magic;
                r.xor_mapped = xor_mapped.map(sock);
                r.mapped = mapped.map(sock);
                r.other_address = other.map(sock);
                r.response_origin = origin.map(sock);
                r.error = error.map(|code| fog_stun::wire::ErrorCode::new(300 + code % 400));
                let mut out = vec![0u8; 2048];
                match r.encode(&mut out) {
                    Ok(n) => out[..n].to_vec(),
                    Err(_) => continue,
                }
            }
        };
        let local = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            first_port.wrapping_add(u16::from(input.local_offset % 24)),
        );
        let packet = Receive {
            source: sock((input.from, input.from_port)),
            local,
            payload: &bytes,
        };
        if d.accepts(&packet) {
            d.handle_packet(now, packet);
        }
        drain(&mut d, now, &mut sent, &mut done);
    }
    let s = *d.stats();
    assert_eq!(
        s.received,
        s.accepted
            + s.late
            + s.unknown_transaction
            + s.wrong_source
            + s.wrong_local
            + s.malformed
            + s.unexpected,
        "every datagram is counted once: {s:?}"
    );
});
