//! The `fog_turn` client machine fed arbitrary answers: raw bytes, or responses built from parts
//! that carry the transaction ID of a request it really sent (so that the 401/438 handling,
//! allocation, refresh, permission and channel paths are reached), signed with the right key or
//! not, plus commands and the passing of time.
//!
//! Invariants: nothing panics; no deadline is in the past; a closed client stays closed and
//! asks for no more wake-ups.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_core::{Receive, SansIo};
use fog_turn::client::{Client, ClientConfig, State};
use fog_turn::wire::{Class, ErrorCode, IntegrityKey, TransactionId, TurnMessage};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Raw(Vec<u8>),
    Answer {
        /// Answer the n-th request sent so far (modulo), or make up an ID.
        answer: Option<u8>,
        made_up: [u8; 12],
        error: Option<u16>,
        realm: bool,
        nonce: Option<u8>,
        signed: bool,
        relayed: Option<u16>,
        lifetime: Option<u32>,
    },
    Data {
        channel: Option<u16>,
        peer: u8,
        data: Vec<u8>,
    },
    Permission(u8),
    Bind(u8),
    Send {
        peer: u8,
        data: Vec<u8>,
    },
    Deallocate,
    Advance(u32),
}

fn peer(p: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(203, 0, 113, p % 8)), 6000)
}

fuzz_target!(|ops: Vec<Op>| {
    let server: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let local: SocketAddr = "192.168.1.2:5000".parse().unwrap();
    let mut config = ClientConfig::new(server, "1700086400:fuzz", "pw", 1);
    config.software = Some("fuzz".to_owned());
    let key = IntegrityKey::long_term("1700086400:fuzz", "r", "pw");
    let mut client = Client::new(config);
    let mut now = Instant::now();
    client.allocate(now).unwrap();
    let mut sent: Vec<TransactionId> = Vec::new();
    let mut buf = vec![0u8; 65_535];
    let mut closed = false;

    for op in ops.into_iter().take(64) {
        let payload = match op {
            Op::Raw(bytes) => Some(bytes),
            Op::Answer {
                answer,
                made_up,
                error,
                realm,
                nonce,
                signed,
                relayed,
                lifetime,
            } => {
                let tid = match answer {
                    Some(i) if !sent.is_empty() => sent[usize::from(i) % sent.len()],
                    _ => TransactionId::new(made_up),
                };
                let class = if error.is_some() {
                    Class::ErrorResponse
                } else {
                    Class::SuccessResponse
                };
                // The method does not matter to the client: it matches by transaction ID.
                let mut m = TurnMessage::new(class, fog_turn::wire::method::ALLOCATE, tid);
                m.error = error.map(|c| ErrorCode {
                    code: 300 + c % 300,
                    reason: String::new(),
                });
                m.realm = realm.then(|| "r".to_owned());
                m.nonce = nonce.map(|n| format!("n{n}"));
                m.xor_relayed_address = relayed.map(|p| SocketAddr::new(server.ip(), p));
                m.lifetime = lifetime;
                m.to_bytes(signed.then_some(&key)).ok()
            }
            Op::Data {
                channel,
                peer: p,
                data,
            } => {
                let data: Vec<u8> = data.into_iter().take(2000).collect();
                match channel {
                    Some(c) => {
                        let c = 0x4000 | (c & 0x0FFF);
                        let mut out = vec![0u8; data.len() + 4];
                        fog_turn::wire::ChannelData {
                            channel: c,
                            data: &data,
                        }
                        .encode(false, &mut out)
                        .map(|n| out[..n].to_vec())
                    }
                    None => {
                        let mut m = TurnMessage::new(
                            Class::Indication,
                            fog_turn::wire::method::DATA,
                            TransactionId::new([0; 12]),
                        );
                        m.xor_peer_addresses = vec![peer(p)];
                        m.data = Some(data);
                        m.to_bytes(None).ok()
                    }
                }
            }
            Op::Permission(p) => {
                let _ = client.create_permission(now, peer(p).ip());
                None
            }
            Op::Bind(p) => {
                let _ = client.bind_channel(now, peer(p));
                None
            }
            Op::Send { peer: p, data } => {
                let data: Vec<u8> = data.into_iter().take(2000).collect();
                let _ = client.send_to(now, peer(p), &data);
                None
            }
            Op::Deallocate => {
                client.deallocate(now);
                None
            }
            Op::Advance(ms) => {
                now += Duration::from_millis(u64::from(ms % 4_000_000));
                client.handle_timeout(now);
                None
            }
        };
        if let Some(payload) = payload {
            let packet = Receive {
                source: server,
                local,
                payload: &payload,
            };
            if client.accepts(&packet) {
                client.handle_packet(now, packet);
            }
        }
        while let Some(t) = client.poll_transmit(now, &mut buf) {
            assert_eq!(t.destination, server);
            assert!(!closed, "a closed client sends nothing");
            if let Ok(m) = TurnMessage::decode(&buf[..t.len]) {
                if m.class == Class::Request {
                    sent.push(m.transaction_id);
                }
            }
        }
        while client.poll_event().is_some() {}
        if closed {
            assert_eq!(client.state(), State::Closed);
        }
        closed = client.state() == State::Closed;
        if let Some(t) = client.poll_timeout() {
            assert!(t >= now, "deadline in the past");
            assert!(!closed, "a closed client wants no timer");
        }
    }
});
