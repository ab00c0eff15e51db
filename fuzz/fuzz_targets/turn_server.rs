//! The `fog_turn` server machine fed arbitrary operations: raw datagrams on the listen address or
//! a relayed one, and requests built from parts and signed with the right key for the nonce the
//! server last handed that client (so allocation, permissions, channels and relaying are reached),
//! from a handful of clients, peers and strangers, at increasing times; each either as a datagram
//! or as a message from the client's TCP connection (RFC 8656 §3.1), whose connections also close.
//!
//! Invariants: nothing panics; every datagram or stream message lands in exactly one input
//! counter; answers on the listen address go to the sender, on the transport it used; ChannelData
//! on a stream is padded to 4 bytes (§12.5); an answer to an unauthenticated request stays under 160
//! bytes; datagrams to peers leave from a relayed address; no deadline is in the past.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_core::{Receive, SansIo, SocketRequest};
use fog_turn::auth::AuthSecret;
use fog_turn::server::{Limits, Server, ServerConfig, Stats};
use fog_turn::wire::{Class, IntegrityKey, TransactionId, TurnMessage, method};
use libfuzzer_sys::fuzz_target;

const UNIX0: u64 = 1_700_000_000;
const REALM: &str = "fuzz";

#[derive(Debug, Arbitrary)]
enum Op {
    Raw {
        route: u8,
        who: u8,
        tcp: bool,
        bytes: Vec<u8>,
    },
    Request {
        who: u8,
        tcp: bool,
        kind: u8,
        signed: bool,
        expired_user: bool,
        tid: u8,
        lifetime: Option<u32>,
        transport: Option<u8>,
        channel: Option<u16>,
        peers: Vec<u8>,
        data: Option<Vec<u8>>,
    },
    FromPeer {
        peer: u8,
        to: u8,
        bytes: Vec<u8>,
    },
    Advance(u32),
    CloseStream(u8),
}

#[derive(Debug, Arbitrary)]
struct Input {
    tight: bool,
    ops: Vec<Op>,
}

fn host(who: u8) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, who % 4)),
        40000 + u16::from(who % 3),
    )
}

fn total(s: &Stats) -> u64 {
    s.requests
        + s.keepalives
        + s.dropped_rate_limited
        + s.relayed_to_peer
        + s.relayed_to_client
        + s.dropped_no_permission
        + s.dropped_no_allocation
        + s.dropped_bandwidth
        + s.dropped_malformed
        + s.dropped_forbidden_peer
}

fuzz_target!(|input: Input| {
    let t0 = Instant::now();
    let listen: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let secret = AuthSecret::new(b"fuzz".to_vec());
    let mut config = ServerConfig::new(listen, REALM, secret.clone(), [1; 32], (t0, UNIX0));
    config.relay_ports = 50000..=50003;
    if input.tight {
        config.limits = Limits {
            max_allocations: 2,
            max_allocations_per_user: 1,
            max_permissions: 2,
            max_channels: 2,
            bandwidth_bytes_per_s: 100,
            burst_bytes: 100,
            ..Limits::default()
        };
    }
    let mut server = Server::new(config);
    let mut now = t0;
    let mut nonces: Vec<(SocketAddr, String)> = Vec::new();
    let mut relayed: Vec<SocketAddr> = Vec::new();
    let mut buf = vec![0u8; 65_535];

    // Relayed addresses the server asked bound and has not asked unbound yet.
    let mut bound: Vec<SocketAddr> = Vec::new();
    for op in input.ops.into_iter().take(64) {
        let (source, local, payload, unauthenticated, tcp) = match op {
            Op::CloseStream(who) => {
                server.close_stream(host(who));
                drain_socket_requests(&mut server, &mut bound);
                while server.poll_event().is_some() {}
                continue;
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms % 4_000_000));
                server.handle_timeout(now);
                drain_socket_requests(&mut server, &mut bound);
                if let Some(t) = server.poll_timeout() {
                    assert!(t > now);
                }
                continue;
            }
            Op::Raw {
                route,
                who,
                tcp,
                bytes,
            } => {
                let local = if route % 2 == 0 {
                    listen
                } else {
                    relayed
                        .get(usize::from(route) % relayed.len().max(1))
                        .copied()
                        .unwrap_or(listen)
                };
                (host(who), local, bytes, true, tcp && local == listen)
            }
            Op::FromPeer { peer, to, bytes } => {
                let Some(&local) = relayed.get(usize::from(to) % relayed.len().max(1)) else {
                    continue;
                };
                (host(peer), local, bytes, false, false)
            }
            Op::Request {
                who,
                tcp,
                kind,
                signed,
                expired_user,
                tid,
                lifetime,
                transport,
                channel,
                peers,
                data,
            } => {
                let from = host(who);
                let (m, class) = match kind % 6 {
                    0 => (method::ALLOCATE, Class::Request),
                    1 => (method::REFRESH, Class::Request),
                    2 => (method::CREATE_PERMISSION, Class::Request),
                    3 => (method::CHANNEL_BIND, Class::Request),
                    4 => (method::SEND, Class::Indication),
                    _ => (method::BINDING, Class::Request),
                };
                let mut msg = TurnMessage::new(class, m, TransactionId::new([tid; 12]));
                msg.lifetime = lifetime;
                msg.requested_transport = transport;
                msg.channel_number = channel;
                msg.xor_peer_addresses = peers.iter().take(4).map(|&p| host(p)).collect();
                msg.data = data.map(|d| d.into_iter().take(2000).collect());
                let nonce = nonces
                    .iter()
                    .rev()
                    .find(|(a, _)| *a == from)
                    .map(|(_, n)| n.clone());
                let mut key = None;
                if let (true, Some(nonce)) = (signed && class == Class::Request, nonce) {
                    let expiry = if expired_user { UNIX0 } else { UNIX0 + 86_400 };
                    let (username, password) = secret.credentials(expiry, &format!("u{}", who % 2));
                    key = Some(IntegrityKey::long_term(&username, REALM, &password));
                    msg.username = Some(username);
                    msg.realm = Some(REALM.to_owned());
                    msg.nonce = Some(nonce);
                }
                let Ok(bytes) = msg.to_bytes(key.as_ref()) else {
                    continue;
                };
                (from, listen, bytes, key.is_none(), tcp)
            }
        };
        let before = total(server.stats());
        let packet = Receive {
            source,
            local,
            payload: &payload,
        };
        if tcp {
            server.handle_stream_message(now, source, &payload);
        } else {
            let _ = server.accepts(&packet);
            server.handle_packet(now, packet);
        }
        assert_eq!(
            total(server.stats()),
            before + 1,
            "one counter per datagram"
        );
        drain_socket_requests(&mut server, &mut bound);
        while let Some(t) = server.poll_transmit(now, &mut buf) {
            let out = &buf[..t.len];
            if t.source == Some(listen) {
                // An answer, or peer data on its way to a client.
                if let Ok(answer) = TurnMessage::decode(out) {
                    if answer.class == Class::ErrorResponse {
                        assert!(!tcp, "a datagram answer to a stream message");
                        assert_eq!(t.destination, source);
                        if unauthenticated {
                            assert!(t.len < 160, "{} bytes to a stranger", t.len);
                        }
                    }
                    if let Some(nonce) = answer.nonce {
                        nonces.push((t.destination, nonce));
                    }
                    if let Some(r) = answer.xor_relayed_address {
                        if !relayed.contains(&r) {
                            relayed.push(r);
                        }
                    }
                }
            } else {
                let from = t.source.expect("relayed traffic names its source");
                assert!(relayed.contains(&from), "from a relayed address");
                assert!(bound.contains(&from), "from a relayed address asked bound");
            }
        }
        while let Some(t) = server.poll_stream_transmit() {
            let out = &t.bytes;
            if let Some(0x40..=0x7F) = out.first() {
                assert_eq!(out.len() % 4, 0, "unpadded ChannelData on a stream");
            } else if let Ok(answer) = TurnMessage::decode(out) {
                if answer.class == Class::ErrorResponse {
                    assert!(
                        tcp && t.client == source,
                        "an answer to the sender, on its stream"
                    );
                    if unauthenticated {
                        assert!(out.len() < 160, "{} bytes to a stranger", out.len());
                    }
                }
                if let Some(nonce) = answer.nonce {
                    nonces.push((t.client, nonce));
                }
                if let Some(r) = answer.xor_relayed_address {
                    if !relayed.contains(&r) {
                        relayed.push(r);
                    }
                }
            }
        }
        while server.poll_event().is_some() {}
        if let Some(t) = server.poll_timeout() {
            assert!(t > now);
        }
    }
});

/// Takes the server's socket requests as a driver would: a bind only for an address not bound
/// yet, an unbind only for one that is.
fn drain_socket_requests(server: &mut Server, bound: &mut Vec<SocketAddr>) {
    while let Some(request) = server.poll_socket_request() {
        match request {
            SocketRequest::Bind(a) => {
                assert!(!bound.contains(&a), "{a} asked bound twice");
                bound.push(a);
            }
            SocketRequest::Unbind(a) => {
                let i = bound.iter().position(|&b| b == a);
                assert!(i.is_some(), "{a} asked unbound but not bound");
                bound.retain(|&b| b != a);
            }
        }
    }
}
