//! The connectivity agent fed arbitrary datagrams: raw bytes, or checks and answers built from
//! parts and signed with the right passwords (so that role conflicts, nomination, peer-reflexive
//! learning and consent are reached), answering transaction IDs the agent really sent, from known
//! or unknown addresses, at any time, for any of the strategy's plans.
//!
//! Candidates also arrive late (trickled), and further local sockets (another IPv4 interface,
//! an IPv6 one) come and go.
//!
//! Invariants: nothing panics; after `handle_timeout(now)` the agent never asks to be woken
//! before `now`; it never sends from a socket it does not own (or no longer owns).

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_core::nat::{Behaviour, Filtering, Mapping, PortPattern};
use fog_core::pairing::Who;
use fog_core::{Receive, SansIo};
use fog_ice::agent::{Agent, AgentConfig, Credentials};
use fog_ice::candidate::{Candidate, Kind};
use fog_ice::strategy::{Plan, StrategyConfig};
use fog_stun::wire::{Class, ErrorCode, IntegrityKey, Message, Method, TransactionId};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
struct Setup {
    seed: u64,
    controlling: bool,
    a: u8,
    b: u8,
    remotes: Vec<(u8, u8, u16)>,
}

#[derive(Debug, Arbitrary)]
enum Payload {
    Raw(Vec<u8>),
    Check {
        right_user: bool,
        right_key: bool,
        use_candidate: bool,
        controlling: Option<u64>,
        controlled: Option<u64>,
        priority: Option<u32>,
        nomination: Option<u32>,
    },
    /// A candidate trickled now.
    Trickle {
        kind: u8,
        host: u8,
        port: u16,
        v6: bool,
    },
    /// One of the two further local sockets comes up or goes away.
    Interface {
        v6: bool,
        up: bool,
    },
    Answer {
        /// Answer the n-th check sent so far (modulo), or make up an ID.
        answer: Option<u16>,
        made_up: [u8; 12],
        error: Option<u16>,
        right_key: bool,
    },
}

#[derive(Debug, Arbitrary)]
struct Input {
    from: u8,
    from_port: u16,
    advance_ms: u16,
    payload: Payload,
}

fn behaviour(n: u8) -> Behaviour {
    let mapping = [
        Mapping::EndpointIndependent,
        Mapping::AddressDependent,
        Mapping::AddressAndPortDependent,
    ];
    let filtering = [
        Filtering::EndpointIndependent,
        Filtering::AddressDependent,
        Filtering::AddressAndPortDependent,
    ];
    let ports = [
        PortPattern::Preserved,
        PortPattern::Sequential { delta: 1 },
        PortPattern::Random,
    ];
    match n % 30 {
        27 => Behaviour::Open,
        28 => Behaviour::UdpBlocked,
        29 => Behaviour::Firewall {
            filtering: Filtering::AddressAndPortDependent,
        },
        k => Behaviour::Nat {
            mapping: mapping[usize::from(k / 9)],
            filtering: filtering[usize::from(k / 3 % 3)],
            ports: ports[usize::from(k % 3)],
            hairpinning: false,
        },
    }
}

fn addr(host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(203, 0, 113, host % 8)),
        port % 16 + 5000,
    )
}

fn addr6(host: u8, port: u16) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V6(Ipv6Addr::new(
            0x2001,
            0xdb8,
            0,
            0,
            0,
            0,
            0,
            u16::from(host % 8),
        )),
        port % 16 + 5000,
    )
}

const KINDS: [Kind; 6] = [
    Kind::Host,
    Kind::ServerReflexive,
    Kind::PeerReflexive,
    Kind::Predicted,
    Kind::Relayed,
    Kind::Mapped,
];

fuzz_target!(|data: (Setup, Vec<Input>)| {
    let (setup, inputs) = data;
    let local_creds = Credentials {
        ufrag: "local".into(),
        pwd: "local-password-22-chars".into(),
    };
    let remote_creds = Credentials {
        ufrag: "remote".into(),
        pwd: "remote-password-22-chars".into(),
    };
    let me = if setup.controlling { Who::A } else { Who::B };
    let mut strategy = StrategyConfig::default();
    strategy.budget.sockets = 8;
    strategy.budget.probes = 16;
    let plan = Plan::new(behaviour(setup.a), behaviour(setup.b), me, &strategy);
    let base: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let config = AgentConfig::new(
        local_creds.clone(),
        remote_creds.clone(),
        setup.controlling,
        base,
        plan,
        setup.seed,
    );
    let mut agent = Agent::new(config);
    let other4: SocketAddr = "192.0.2.9:5000".parse().unwrap();
    let other6: SocketAddr = "[2001:db8::99]:5000".parse().unwrap();
    let mut up: Vec<SocketAddr> = Vec::new();
    let mut now = Instant::now();
    for (kind, host, port) in setup.remotes.iter().take(16) {
        let kind = KINDS[usize::from(kind % 5)];
        agent.add_remote(now, Candidate::new(kind, addr(*host, *port)));
    }
    agent.start(now);
    let local_key = IntegrityKey::short_term(&local_creds.pwd);
    let remote_key = IntegrityKey::short_term(&remote_creds.pwd);
    let mut sent: Vec<(TransactionId, SocketAddr, SocketAddr)> = Vec::new();
    let mut buf = vec![0u8; 65_535];
    let mut drain = |agent: &mut Agent,
                     now: Instant,
                     sent: &mut Vec<(TransactionId, SocketAddr, SocketAddr)>,
                     up: &[SocketAddr]| {
        agent.handle_timeout(now);
        while let Some(t) = agent.poll_transmit(now, &mut buf) {
            let source = t.source.expect("checks name their socket");
            assert!(
                source == base
                    || agent.birthday_sockets().contains(&source)
                    || up.contains(&source),
                "sent from {source}, not ours"
            );
            if let Ok(m) = Message::decode(&buf[..t.len]) {
                if m.class == Class::Request && sent.len() < 4096 {
                    sent.push((m.transaction_id, source, t.destination));
                }
            }
        }
        while agent.poll_event().is_some() {}
        if let Some(t) = agent.poll_timeout() {
            assert!(t >= now, "asked to be woken in the past");
        }
    };
    drain(&mut agent, now, &mut sent, &up);
    for input in inputs.into_iter().take(256) {
        now += Duration::from_millis(u64::from(input.advance_ms % 10_000));
        let mut source = addr(input.from, input.from_port);
        let mut local = base;
        let bytes = match input.payload {
            Payload::Trickle {
                kind,
                host,
                port,
                v6,
            } => {
                let at = if v6 {
                    addr6(host, port)
                } else {
                    addr(host, port)
                };
                agent.add_remote(now, Candidate::new(KINDS[usize::from(kind % 5)], at));
                drain(&mut agent, now, &mut sent, &up);
                continue;
            }
            Payload::Interface { v6, up: on } => {
                let socket = if v6 { other6 } else { other4 };
                if on {
                    agent.add_local(now, socket);
                    if !up.contains(&socket) {
                        up.push(socket);
                    }
                } else {
                    agent.remove_local(now, socket);
                    up.retain(|s| *s != socket);
                }
                drain(&mut agent, now, &mut sent, &up);
                continue;
            }
            Payload::Raw(bytes) => bytes,
            Payload::Check {
                right_user,
                right_key,
                use_candidate,
                controlling,
                controlled,
                priority,
                nomination,
            } => {
                let mut m = Message::new(
                    Class::Request,
                    Method::BINDING,
                    TransactionId::new([input.from; 12]),
                );
                m.attributes.username = Some(if right_user {
                    "local:remote".into()
                } else {
                    "x:y".into()
                });
                m.attributes.use_candidate = use_candidate;
                m.attributes.ice_controlling = controlling;
                m.attributes.ice_controlled = controlled;
                m.attributes.priority = priority;
                m.attributes.nomination = nomination;
                m.fingerprint = true;
                let key = if right_key {
                    local_key.clone()
                } else {
                    remote_key.clone()
                };
                m.to_bytes(Some(&key)).unwrap_or_default()
            }
            Payload::Answer {
                answer,
                made_up,
                error,
                right_key,
            } => {
                let id = match answer {
                    Some(n) if !sent.is_empty() => {
                        let (id, from_socket, to) = sent[usize::from(n) % sent.len()];
                        source = to;
                        local = from_socket;
                        id
                    }
                    _ => TransactionId::new(made_up),
                };
                let class = if error.is_some() {
                    Class::ErrorResponse
                } else {
                    Class::SuccessResponse
                };
                let mut m = Message::new(class, Method::BINDING, id);
                match error {
                    Some(code) => m.attributes.error_code = Some(ErrorCode::new(300 + code % 400)),
                    None => m.attributes.xor_mapped_address = Some(local),
                }
                m.fingerprint = true;
                let key = if right_key {
                    remote_key.clone()
                } else {
                    local_key.clone()
                };
                m.to_bytes(Some(&key)).unwrap_or_default()
            }
        };
        agent.handle_packet(
            now,
            Receive {
                source,
                local,
                payload: &bytes,
            },
        );
        drain(&mut agent, now, &mut sent, &up);
    }
});
