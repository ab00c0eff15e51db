//! Server tests with `Repr`s (requests built as [`BindingRequest`]/[`Message`], answers read as
//! [`BindingResponse`]), in the style of smoltcp's socket tests.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::wire::{BindingRequest, ChangeRequest, Credentials, DecodeError, TransactionId};

const P1: u16 = 3478;
const P2: u16 = 3479;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn a1() -> IpAddr {
    ip("192.0.2.1")
}

fn a2() -> IpAddr {
    ip("192.0.2.2")
}

fn client() -> SocketAddr {
    addr("198.51.100.7:50000")
}

fn full() -> Server {
    Server::new(ServerConfig::new(SocketAddr::new(a1(), P1)).with_alternate(a2(), P2))
}

fn epoch() -> Instant {
    #[allow(clippy::disallowed_methods)] // tests take any epoch
    Instant::now()
}

fn tid(n: u8) -> TransactionId {
    TransactionId::new([n; 12])
}

/// One datagram the server sent, decoded.
#[derive(Debug)]
struct Sent {
    transmit: Transmit,
    len: usize,
    response: BindingResponse,
    raw: Vec<u8>,
}

/// Hands `request` to the server as if it came from `from` to `to`, and drains it.
fn exchange_bytes(
    server: &mut Server,
    now: Instant,
    from: SocketAddr,
    to: SocketAddr,
    request: &[u8],
) -> Vec<Sent> {
    let packet = Receive {
        source: from,
        local: to,
        payload: request,
    };
    server.handle_packet(now, packet);
    let mut sent = Vec::new();
    let mut buf = vec![0u8; 65_535];
    while let Some(transmit) = server.poll_transmit(now, &mut buf) {
        let raw = buf[..transmit.len].to_vec();
        let response = BindingResponse::decode(&raw)
            .expect("the server sends valid STUN")
            .expect("the server sends Binding responses");
        sent.push(Sent {
            transmit,
            len: transmit.len,
            response,
            raw,
        });
    }
    sent
}

fn exchange(
    server: &mut Server,
    now: Instant,
    from: SocketAddr,
    to: SocketAddr,
    request: &BindingRequest,
) -> Vec<Sent> {
    let bytes = request
        .to_message()
        .to_bytes(request.credentials.as_ref().map(Credentials::key).as_ref());
    exchange_bytes(server, now, from, to, &bytes.unwrap())
}

/// The single answer to `request`.
fn answer(server: &mut Server, to: SocketAddr, request: &BindingRequest) -> Sent {
    let mut sent = exchange(server, epoch(), client(), to, request);
    assert_eq!(sent.len(), 1, "one answer expected");
    sent.remove(0)
}

fn with_change(ip: bool, port: bool) -> BindingRequest {
    BindingRequest {
        change_ip: ip,
        change_port: port,
        ..BindingRequest::new(tid(1))
    }
}

#[test]
fn binding_on_the_primary_address() {
    let mut server = full();
    let primary = SocketAddr::new(a1(), P1);
    let sent = answer(&mut server, primary, &BindingRequest::new(tid(1)));
    assert_eq!(sent.transmit.destination, client());
    assert_eq!(sent.transmit.source, Some(primary));
    assert_eq!(
        sent.response,
        BindingResponse {
            transaction_id: tid(1),
            xor_mapped: Some(client()),
            mapped: Some(client()),
            response_origin: Some(primary),
            other_address: Some(SocketAddr::new(a2(), P2)),
            ..BindingResponse::default()
        }
    );
    assert_eq!(
        *server.stats(),
        ServerStats {
            received: 1,
            answered: 1,
            ..ServerStats::default()
        }
    );
}

#[test]
fn change_request_routing_follows_rfc5780_table_1() {
    let mut server = full();
    for local in server.config().local_addrs() {
        let (da, dp) = (local.ip(), local.port());
        let ca = if da == a1() { a2() } else { a1() };
        let cp = if dp == P1 { P2 } else { P1 };
        for (change_ip, change_port) in [(false, false), (true, false), (false, true), (true, true)]
        {
            let sent = answer(&mut server, local, &with_change(change_ip, change_port));
            let expected = SocketAddr::new(
                if change_ip { ca } else { da },
                if change_port { cp } else { dp },
            );
            assert_eq!(
                sent.transmit.source,
                Some(expected),
                "arrived on {local}, change ip {change_ip} port {change_port}"
            );
            // RESPONSE-ORIGIN says where it came from; OTHER-ADDRESS is Ca:Cp whatever the flags.
            assert_eq!(sent.response.response_origin, Some(expected));
            assert_eq!(sent.response.other_address, Some(SocketAddr::new(ca, cp)));
            assert_eq!(sent.response.mapped_address(), Some(client()));
            assert_eq!(sent.transmit.destination, client());
        }
    }
    assert_eq!(server.stats().answered, 16);
}

#[test]
fn one_address_server_refuses_change_request_with_420() {
    let primary = SocketAddr::new(a1(), P1);
    let mut server = Server::new(ServerConfig::new(primary));
    assert_eq!(server.config().local_addrs(), [primary]);

    let plain = answer(&mut server, primary, &BindingRequest::new(tid(1)));
    assert_eq!(plain.response.other_address, None);
    assert_eq!(plain.response.response_origin, Some(primary));

    for (ip, port) in [(true, false), (false, true), (true, true)] {
        let sent = answer(&mut server, primary, &with_change(ip, port));
        assert_eq!(sent.transmit.source, Some(primary));
        assert_eq!(sent.transmit.destination, client());
        assert_eq!(
            sent.response.error.as_ref().map(|e| e.code),
            Some(ErrorCode::UNKNOWN_ATTRIBUTE)
        );
        assert_eq!(
            sent.response.unknown_attributes,
            [attribute_type::CHANGE_REQUEST]
        );
    }

    // A CHANGE-REQUEST asking for nothing, as classic clients send in their first test.
    let mut request = BindingRequest::new(tid(2)).to_message();
    request.attributes.change_request = Some(ChangeRequest::default());
    let sent = exchange_bytes(
        &mut server,
        epoch(),
        client(),
        primary,
        &request.to_bytes(None).unwrap(),
    );
    assert!(sent[0].response.error.is_none());
    assert_eq!(server.stats().error_responses, 3);
    assert_eq!(server.stats().answered, 2);
}

#[test]
fn alternate_ip_without_alternate_port_is_not_an_rfc5780_server() {
    let primary = SocketAddr::new(a1(), P1);
    let config = ServerConfig {
        alternate_ip: Some(a2()),
        ..ServerConfig::new(primary)
    };
    let mut server = Server::new(config);
    assert_eq!(
        server.config().local_addrs(),
        [primary, SocketAddr::new(a2(), P1)]
    );
    let sent = answer(
        &mut server,
        SocketAddr::new(a2(), P1),
        &BindingRequest::new(tid(1)),
    );
    assert_eq!(sent.response.other_address, None);
    assert_eq!(sent.transmit.source, Some(SocketAddr::new(a2(), P1)));
    let sent = answer(&mut server, primary, &with_change(true, false));
    assert!(sent.response.error.is_some());
}

#[test]
fn response_port_redirects_to_the_same_ip() {
    let mut server = full();
    let primary = SocketAddr::new(a1(), P1);
    let request = BindingRequest {
        response_port: Some(40_000),
        ..BindingRequest::new(tid(1))
    };
    let sent = answer(&mut server, primary, &request);
    assert_eq!(
        sent.transmit.destination,
        SocketAddr::new(client().ip(), 40_000)
    );
    // The mapped address is still where the request came from.
    assert_eq!(sent.response.xor_mapped, Some(client()));
    // Nothing else: the redirected answer is hardly larger than the request (no amplifier
    // for an attacker who forges the source IP), with or without FINGERPRINT and
    // CHANGE-REQUEST (a port-mapping probe).
    assert_eq!(sent.response.mapped, None);
    assert_eq!(sent.response.other_address, None);
    assert_eq!(sent.response.response_origin, None);
    for (fingerprint, change) in [(false, false), (true, false), (false, true), (true, true)] {
        let request = BindingRequest {
            response_port: Some(40_000),
            fingerprint,
            change_ip: change,
            change_port: change,
            ..BindingRequest::new(tid(4))
        };
        let mut buf = [0u8; 512];
        let asked = request.encode(&mut buf).unwrap();
        let sent = answer(&mut server, primary, &request);
        let answered = sent.response.encode(&mut buf).unwrap();
        assert!(answered <= asked + 4, "{answered} > {asked} + 4");
    }

    // With PADDING, or to port 0: 400, to the source.
    for request in [
        BindingRequest {
            response_port: Some(40_000),
            padding: Some(100),
            ..BindingRequest::new(tid(2))
        },
        BindingRequest {
            response_port: Some(0),
            ..BindingRequest::new(tid(3))
        },
    ] {
        let sent = answer(&mut server, primary, &request);
        assert_eq!(sent.transmit.destination, client());
        assert_eq!(
            sent.response.error.as_ref().map(|e| e.code),
            Some(ErrorCode::BAD_REQUEST)
        );
        assert_eq!(sent.response.padding, None);
    }
}

#[test]
fn padding_is_mirrored_and_never_larger() {
    let mut server = full();
    let primary = SocketAddr::new(a1(), P1);
    for n in [0u16, 1, 4, 1_500, 9_000, 65_000] {
        let request = BindingRequest {
            padding: Some(n),
            ..BindingRequest::new(tid(1))
        };
        let request_len = request.to_message().encoded_len(false).unwrap();
        let sent = answer(&mut server, primary, &request);
        assert_eq!(sent.response.padding, Some(n));
        assert!(sent.len <= request_len + MAX_AMPLIFICATION);
    }
    // Near the 64 KB limit the answer's PADDING is cut to fit one datagram.
    let request = BindingRequest {
        padding: Some(65_480),
        ..BindingRequest::new(tid(1))
    };
    let sent = answer(&mut server, primary, &request);
    assert_eq!(sent.response.padding, Some(65_432));
    assert_eq!(sent.len, MAX_RESPONSE_LEN - 3);
}

#[test]
fn fingerprint_is_mirrored() {
    let mut server = full();
    let primary = SocketAddr::new(a1(), P1);
    let request = BindingRequest {
        fingerprint: true,
        ..BindingRequest::new(tid(1))
    };
    assert!(answer(&mut server, primary, &request).response.fingerprint);
    let with_error = BindingRequest {
        fingerprint: true,
        response_port: Some(0),
        ..BindingRequest::new(tid(2))
    };
    let sent = answer(&mut server, primary, &with_error);
    assert!(sent.response.fingerprint && sent.response.error.is_some());
    assert!(
        !answer(&mut server, primary, &BindingRequest::new(tid(3)))
            .response
            .fingerprint
    );
}

#[test]
fn credentials_are_accepted_but_not_checked() {
    let mut server = full();
    let request = BindingRequest {
        credentials: Some(Credentials::ShortTerm {
            username: "alice".to_owned(),
            password: "secret".to_owned(),
        }),
        ..BindingRequest::new(tid(1))
    };
    let sent = answer(&mut server, SocketAddr::new(a1(), P1), &request);
    assert!(sent.response.error.is_none());
    assert_eq!(
        crate::wire::verify_integrity(&sent.raw, &crate::wire::IntegrityKey::short_term("secret")),
        Err(DecodeError::IntegrityMissing)
    );
}

/// A classic RFC 3489 Binding request: no cookie, the ID's first 32 bits where it would be.
fn classic_request(change: Option<(bool, bool)>) -> Vec<u8> {
    let mut message = BindingRequest::new(tid(7)).to_message();
    message.cookie = Cookie::Classic([0xca, 0xfe, 0xba, 0xbe]);
    message.attributes.change_request = change.map(|(change_ip, change_port)| ChangeRequest {
        change_ip,
        change_port,
    });
    message.to_bytes(None).unwrap()
}

#[test]
fn classic_rfc3489_clients_get_classic_answers() {
    let mut server = full();
    let primary = SocketAddr::new(a1(), P1);
    let request = classic_request(Some((false, false)));
    let sent = exchange_bytes(&mut server, epoch(), client(), primary, &request);
    let sent = &sent[0];
    // The 128-bit transaction ID is echoed (RFC 5389 §12.2).
    assert_eq!(sent.raw[4..20], request[4..20]);
    assert_eq!(
        sent.response,
        BindingResponse {
            transaction_id: tid(7),
            cookie: Cookie::Classic([0xca, 0xfe, 0xba, 0xbe]),
            mapped: Some(client()),
            source_address: Some(primary),
            changed_address: Some(SocketAddr::new(a2(), P2)),
            ..BindingResponse::default()
        }
    );

    // Change IP and port, as the classic client's test II does.
    let sent = exchange_bytes(
        &mut server,
        epoch(),
        client(),
        primary,
        &classic_request(Some((true, true))),
    );
    let alternate = SocketAddr::new(a2(), P2);
    assert_eq!(sent[0].transmit.source, Some(alternate));
    assert_eq!(sent[0].response.source_address, Some(alternate));
    // CHANGED-ADDRESS is where both flags would send from, whatever this request's flags.
    assert_eq!(sent[0].response.changed_address, Some(alternate));
    assert_eq!(server.stats().classic, 2);
}

/// `request` with extra raw attributes appended (before any trailer: there is none).
fn with_raw_attributes(request: &BindingRequest, raw: &[u8]) -> Vec<u8> {
    let mut bytes = request.to_message().to_bytes(None).unwrap();
    bytes.extend_from_slice(raw);
    let len = (bytes.len() - crate::wire::HEADER_LEN) as u16;
    bytes[2..4].copy_from_slice(&len.to_be_bytes());
    bytes
}

#[test]
fn unknown_required_attributes_get_420_listing_them() {
    let mut server = full();
    let primary = SocketAddr::new(a1(), P1);
    // REQUESTED-ADDRESS-FAMILY (TURN, RFC 6156, required), an unknown optional one,
    // RESPONSE-ADDRESS (RFC 3489, required).
    let raw = [
        0x00, 0x17, 0x00, 0x04, 1, 2, 3, 4, 0xc0, 0xff, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00,
    ];
    let request = with_raw_attributes(&BindingRequest::new(tid(1)), &raw);
    let sent = exchange_bytes(&mut server, epoch(), client(), primary, &request);
    assert_eq!(
        sent[0].response.error.as_ref().map(|e| e.code),
        Some(ErrorCode::UNKNOWN_ATTRIBUTE)
    );
    assert_eq!(sent[0].response.unknown_attributes, [0x0017, 0x0002]);
    assert_eq!(sent[0].transmit.destination, client());

    // A classic client gets an even-length list (RFC 3489 §11.2.10).
    let mut classic = BindingRequest::new(tid(2)).to_message();
    classic.cookie = Cookie::Classic([1, 2, 3, 4]);
    let mut bytes = classic.to_bytes(None).unwrap();
    bytes.extend_from_slice(&[0x00, 0x02, 0x00, 0x00]);
    bytes[2..4].copy_from_slice(&4u16.to_be_bytes());
    let sent = exchange_bytes(&mut server, epoch(), client(), primary, &bytes);
    assert_eq!(sent[0].response.unknown_attributes, [0x0002, 0x0002]);
}

#[test]
fn rate_limit_drops_and_counts() {
    let mut server = full();
    let primary = SocketAddr::new(a1(), P1);
    let t0 = epoch();
    let request = BindingRequest::new(tid(1));
    for _ in 0..40 {
        assert_eq!(
            exchange(&mut server, t0, client(), primary, &request).len(),
            1
        );
    }
    assert!(exchange(&mut server, t0, client(), primary, &request).is_empty());
    // Another port of the same IP shares the bucket; another IP does not.
    let same_ip = SocketAddr::new(client().ip(), 1234);
    assert!(exchange(&mut server, t0, same_ip, primary, &request).is_empty());
    let other = addr("198.51.100.8:50000");
    assert_eq!(exchange(&mut server, t0, other, primary, &request).len(), 1);
    // 20/s: one more after 50 ms.
    let t = t0 + Duration::from_millis(50);
    assert_eq!(
        exchange(&mut server, t, client(), primary, &request).len(),
        1
    );
    assert!(exchange(&mut server, t, client(), primary, &request).is_empty());
    assert_eq!(server.stats().rate_limited, 3);
    assert_eq!(server.stats().answered, 42);

    // Off when configured off.
    let mut unlimited = Server::new(ServerConfig {
        rate_limit: None,
        ..server.config().clone()
    });
    for _ in 0..1000 {
        assert_eq!(
            exchange(&mut unlimited, t0, client(), primary, &request).len(),
            1
        );
    }
}

#[test]
fn rate_table_full_refuses_new_sources() {
    let primary = SocketAddr::new(a1(), P1);
    let mut server = Server::new(ServerConfig {
        rate_limit: Some(RateLimit {
            max_sources: 2,
            ..RateLimit::default()
        }),
        ..ServerConfig::new(primary)
    });
    let t0 = epoch();
    let request = BindingRequest::new(tid(1));
    for host in 1..=3u8 {
        let from = SocketAddr::from(([198, 51, 100, host], 40_000));
        let answered = exchange(&mut server, t0, from, primary, &request).len();
        assert_eq!(answered, usize::from(host <= 2));
    }
    assert_eq!(server.stats().rate_table_full, 1);
}

#[test]
fn malformed_and_other_messages_are_counted_never_answered() {
    let mut server = full();
    let primary = SocketAddr::new(a1(), P1);
    let t0 = epoch();
    let binding = BindingRequest::new(tid(1)).to_message();

    let mut bad_fingerprint = BindingRequest {
        fingerprint: true,
        ..BindingRequest::new(tid(1))
    }
    .to_message()
    .to_bytes(None)
    .unwrap();
    let last = bad_fingerprint.len() - 1;
    bad_fingerprint[last] ^= 1;

    let malformed: Vec<Vec<u8>> = vec![
        Vec::new(),
        vec![0x00; 19],
        b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        vec![
            0x00, 0x01, 0x00, 0x04, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ],
        bad_fingerprint,
    ];
    for bytes in &malformed {
        assert!(exchange_bytes(&mut server, t0, client(), primary, bytes).is_empty());
    }

    let mut others = Vec::new();
    for class in [
        Class::Indication,
        Class::SuccessResponse,
        Class::ErrorResponse,
    ] {
        let message = Message {
            class,
            ..binding.clone()
        };
        others.push(message.to_bytes(None).unwrap());
    }
    // An Allocate request (RFC 5766): not ours.
    others.push(
        Message::new(Class::Request, Method::new(0x003).unwrap(), tid(2))
            .to_bytes(None)
            .unwrap(),
    );
    for bytes in &others {
        assert!(exchange_bytes(&mut server, t0, client(), primary, bytes).is_empty());
    }

    // Source port 0 cannot be answered.
    let zero = SocketAddr::new(client().ip(), 0);
    let request = binding.to_bytes(None).unwrap();
    assert!(exchange_bytes(&mut server, t0, zero, primary, &request).is_empty());

    // A local address we were not configured with.
    let elsewhere = addr("192.0.2.99:3478");
    assert!(exchange_bytes(&mut server, t0, client(), elsewhere, &request).is_empty());

    assert_eq!(
        *server.stats(),
        ServerStats {
            received: 11,
            malformed: 6,
            not_binding: 4,
            unknown_local: 1,
            ..ServerStats::default()
        }
    );
}

#[test]
fn too_small_buffer_is_an_event_not_a_truncation() {
    let mut server = full();
    let primary = SocketAddr::new(a1(), P1);
    let t0 = epoch();
    let request = BindingRequest::new(tid(1))
        .to_message()
        .to_bytes(None)
        .unwrap();
    server.handle_packet(
        t0,
        Receive {
            source: client(),
            local: primary,
            payload: &request,
        },
    );
    let mut small = [0u8; 40];
    assert_eq!(server.poll_transmit(t0, &mut small), None);
    assert_eq!(
        server.poll_event(),
        Some(ServerEvent::ResponseTooLarge {
            destination: client(),
            needed: 68,
        })
    );
    assert_eq!(server.poll_event(), None);
    assert_eq!(server.stats().buffer_too_small, 1);
    assert_eq!(server.poll_timeout(), None);
}

#[test]
fn accepts_stun_only() {
    let server = full();
    let request = BindingRequest::new(tid(1))
        .to_message()
        .to_bytes(None)
        .unwrap();
    let mut packet = Receive {
        source: client(),
        local: SocketAddr::new(a1(), P1),
        payload: &request,
    };
    assert!(server.accepts(&packet));
    let quic = [0xc0u8; 32];
    packet.payload = &quic;
    assert!(!server.accepts(&packet));
}

#[test]
fn config_from_addrs() {
    let full = ServerConfig::from_addrs(&[addr("192.0.2.1:3478"), addr("192.0.2.2:3479")]).unwrap();
    assert_eq!(full.other_address(), Some(addr("192.0.2.2:3479")));
    assert_eq!(
        full.local_addrs(),
        [
            addr("192.0.2.1:3478"),
            addr("192.0.2.1:3479"),
            addr("192.0.2.2:3478"),
            addr("192.0.2.2:3479")
        ]
    );
    let ports =
        ServerConfig::from_addrs(&[addr("192.0.2.1:3478"), addr("192.0.2.1:3479")]).unwrap();
    assert_eq!(ports.other_address(), None);
    assert_eq!(ports.local_addrs().len(), 2);
    assert_eq!(ServerConfig::from_addrs(&[]), Err(ConfigError::Empty));
    assert_eq!(
        ServerConfig::from_addrs(&[
            addr("192.0.2.1:1"),
            addr("192.0.2.2:1"),
            addr("192.0.2.3:1")
        ]),
        Err(ConfigError::TooManyIps)
    );
    assert_eq!(
        ServerConfig::from_addrs(&[
            addr("192.0.2.1:1"),
            addr("192.0.2.1:2"),
            addr("192.0.2.1:3")
        ]),
        Err(ConfigError::TooManyPorts)
    );
    assert_eq!(
        ServerConfig::from_addrs(&[addr("192.0.2.1:1"), addr("[2001:db8::1]:1")]),
        Err(ConfigError::MixedFamilies)
    );
}

/// Servers to measure amplification on: IPv4 and IPv6, full and one-address.
fn servers() -> Vec<(Server, SocketAddr)> {
    let v6 = ServerConfig::new(addr("[2001:db8::1]:3478")).with_alternate(ip("2001:db8::2"), P2);
    let mut out = Vec::new();
    for config in [
        ServerConfig::new(SocketAddr::new(a1(), P1)).with_alternate(a2(), P2),
        ServerConfig::new(SocketAddr::new(a1(), P1)),
        v6.clone(),
        ServerConfig::new(v6.primary),
    ] {
        let client = if config.primary.is_ipv4() {
            client()
        } else {
            addr("[2001:db8:ffff::7]:50000")
        };
        out.push((
            Server::new(ServerConfig {
                rate_limit: None,
                ..config
            }),
            client,
        ));
    }
    out
}

/// Feeds `request` to every local address of every server and checks each answer against
/// the bound; returns the largest excess seen.
fn check_amplification(request: &[u8]) -> usize {
    let mut worst = 0;
    for (mut server, client) in servers() {
        for local in server.config().local_addrs() {
            for sent in exchange_bytes(&mut server, epoch(), client, local, request) {
                assert!(
                    sent.len <= request.len() + MAX_AMPLIFICATION,
                    "{} byte answer to a {} byte request: {:?}",
                    sent.len,
                    request.len(),
                    sent.response
                );
                assert!(sent.len <= MAX_RESPONSE_LEN);
                worst = worst.max(sent.len.saturating_sub(request.len()));
            }
        }
    }
    worst
}

#[test]
fn amplification_bound_over_request_shapes() {
    let mut worst = 0;
    for change_ip in [false, true] {
        for change_port in [false, true] {
            for response_port in [None, Some(0), Some(9)] {
                for padding in [None, Some(0), Some(1), Some(3), Some(1_400), Some(65_400)] {
                    for fingerprint in [false, true] {
                        for software in [false, true] {
                            let request = BindingRequest {
                                change_ip,
                                change_port,
                                response_port,
                                padding,
                                software,
                                fingerprint,
                                ..BindingRequest::new(tid(1))
                            };
                            let Ok(bytes) = request.to_message().to_bytes(None) else {
                                continue;
                            };
                            worst = worst.max(check_amplification(&bytes));
                        }
                    }
                }
            }
        }
    }
    worst = worst.max(check_amplification(&classic_request(None)));
    worst = worst.max(check_amplification(&classic_request(Some((true, true)))));
    for unknown in 1..=20u16 {
        let raw: Vec<u8> = (0..unknown)
            .flat_map(|t| [0x01, t as u8, 0x00, 0x00])
            .collect();
        let bytes = with_raw_attributes(&BindingRequest::new(tid(1)), &raw);
        worst = worst.max(check_amplification(&bytes));
    }
    // The bound is tight: an empty request over IPv6 to a full server reaches it.
    assert_eq!(worst, MAX_AMPLIFICATION);
}

proptest! {
    #[test]
    fn amplification_bound_over_arbitrary_stun(
        kind in prop_oneof![Just(0x0001u16), any::<u16>().prop_map(|t| t & 0x3fff)],
        magic in any::<bool>(),
        id in any::<[u8; 16]>(),
        attrs in proptest::collection::vec(
            (
                prop_oneof![
                    Just(0x0003u16), Just(0x0026), Just(0x0027), Just(0x0006),
                    Just(0x0008), Just(0x8028), Just(0x8022), any::<u16>(),
                ],
                proptest::collection::vec(any::<u8>(), 0..24),
            ),
            0..6,
        ),
    ) {
        let mut bytes = kind.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0, 0]);
        if magic {
            bytes.extend_from_slice(&crate::wire::MAGIC_COOKIE.to_be_bytes());
            bytes.extend_from_slice(&id[4..]);
        } else {
            bytes.extend_from_slice(&id);
        }
        for (t, value) in attrs {
            bytes.extend_from_slice(&t.to_be_bytes());
            bytes.extend_from_slice(&(value.len() as u16).to_be_bytes());
            bytes.extend_from_slice(&value);
            bytes.resize(bytes.len() + (4 - value.len() % 4) % 4, 0);
        }
        let len = (bytes.len() - 20) as u16;
        bytes[2..4].copy_from_slice(&len.to_be_bytes());
        check_amplification(&bytes);
    }
}
