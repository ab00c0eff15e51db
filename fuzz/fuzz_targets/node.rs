//! The node (discovery, signaling client, TURN client, agents) fed arbitrary datagrams on any of
//! its ports from anyone, and arbitrary signaling frames (raw text, or well-formed server frames
//! with fuzzed fields), opens and closes of the signaling channel, `connect` calls, interface
//! addresses that come and go, re-gathering, and time. Half the runs measure two servers first.
//! Half run a port mapper (fed datagrams from its gateway, UPnP's TCP progress, offers naming
//! a mapped candidate, and its deletion).
//!
//! Invariants: nothing panics; after `handle_timeout(now)` the node never asks to be woken
//! before `now`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_core::{Receive, SansIo};
use fog_signal::KeyPair;
use fog_signal::server::{ConnId, Output, Server, ServerConfig};
use fogconnect::{ConnectionId, Node, NodeConfig, SignalInput, SignalOutput, TcpId, TcpInput};

/// The connection with index `i` among those the node holds.
fn nth(node: &Node, i: u8) -> Option<ConnectionId> {
    let count = node.connections().count();
    (count > 0)
        .then(|| node.connections().nth(usize::from(i) % count))
        .flatten()
}
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Op {
    Datagram {
        from: u8,
        from_port: u16,
        port: u8,
        bytes: Vec<u8>,
    },
    Frame(String),
    Relay {
        session: [u8; 16],
        data: Vec<u8>,
    },
    Offer {
        session: [u8; 16],
        port: u16,
        nat: u8,
        /// Signed by the peer it names, as a genuine offer is (else it is dropped at once).
        signed: bool,
        /// With a `mapped` candidate (the peer is then planned as open).
        mapped: bool,
    },
    /// A datagram from the port-mapping gateway to the base socket (PCP, NAT-PMP, SSDP).
    Gateway {
        from_port: u16,
        bytes: Vec<u8>,
    },
    /// Progress of one of the port mapper's TCP connections.
    Tcp {
        id: u8,
        input: u8,
        bytes: Vec<u8>,
    },
    ClosePortMapping,
    Open,
    Closed,
    Connect(u8),
    /// Accept, refuse or close the connection with this index among those held.
    Accept(u8),
    Refuse(u8),
    Close(u8),
    /// Send a datagram of this length on the connection with this index.
    Send(u8, u16),
    Advance(u16),
    /// The further interface addresses become a subset of three (one IPv6).
    Interfaces(u8),
    Regather,
    /// A datagram on one of those addresses' sockets.
    DatagramOn {
        which: u8,
        from: u8,
        bytes: Vec<u8>,
    },
}

fn interfaces(mask: u8) -> Vec<IpAddr> {
    let all: [IpAddr; 3] = [
        "192.0.2.77".parse().unwrap(),
        "2001:db8::77".parse().unwrap(),
        "10.0.0.77".parse().unwrap(),
    ];
    all.into_iter()
        .enumerate()
        .filter(|(i, _)| mask & (1 << i) != 0)
        .map(|(_, ip)| ip)
        .collect()
}

fn nat(n: u8) -> &'static str {
    match n % 4 {
        0 => r#"{"kind":"open"}"#,
        1 => r#"{"kind":"udp_blocked"}"#,
        2 => {
            r#"{"kind":"nat","mapping":"address_and_port_dependent","filtering":"address_and_port_dependent","ports":{"kind":"random"},"hairpinning":false}"#
        }
        _ => {
            r#"{"kind":"nat","mapping":"endpoint_independent","filtering":"address_and_port_dependent","ports":{"kind":"preserved"},"hairpinning":false}"#
        }
    }
}

fn datagram(node: &mut Node, now: Instant, source: SocketAddr, local: SocketAddr, payload: &[u8]) {
    node.handle_packet(
        now,
        Receive {
            source,
            local,
            payload,
        },
    );
}

/// The offer `frame` signed by `key` for `to`, with an exchange key of its own, as the peer's
/// node would make it.
fn sign_offer(frame: &str, key: &KeyPair, to: fog_signal::PeerId, salt: u16) -> String {
    use fog_signal::msg::{Seal, ServerMsg, Sig};
    use fogconnect::node::seal::{Exchange, Role, transcript};
    let Ok(ServerMsg::Offer {
        session,
        from,
        mut description,
    }) = ServerMsg::decode(frame)
    else {
        return frame.to_owned();
    };
    let mut secret = [0x42u8; 32];
    secret[..2].copy_from_slice(&salt.to_le_bytes());
    let exchange = Exchange::new(secret).public();
    let role = Role::Offer { from, to };
    let signature = Sig(key.sign(&transcript(&role, &description, &exchange)));
    description.seal = Some(Seal {
        key: exchange,
        signature,
    });
    ServerMsg::Offer {
        session,
        from,
        description,
    }
    .encode()
}

const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fuzz_target!(|input: (u64, u8, Vec<Op>)| {
    let (seed, setup, ops) = input;
    let stun: SocketAddr = "198.51.100.1:3478".parse().unwrap();
    let base: SocketAddr = "192.0.2.1:5000".parse().unwrap();
    let mut config = NodeConfig::new(KeyPair::from_seed(&[9; 32]), "fuzz", stun, base, seed);
    config.turn = Some("198.51.100.3:3478".parse().unwrap());
    config.interfaces = interfaces(setup);
    if setup & 0x40 != 0 {
        config.accept = fogconnect::AcceptPolicy::All;
    }
    if setup & 0x20 != 0 {
        config.port_mapping = Some(GATEWAY);
    }
    if setup & 0x80 != 0 {
        config.alternatives = vec![fogconnect::ServerChoice {
            stun: "198.51.100.2:3478".parse().unwrap(),
            turn: None,
        }];
    }
    let mut now = Instant::now();
    let mut node = Node::new(config, now);
    let mut buf = vec![0u8; 65_535];
    // Authenticate with a real server first, so that what follows reaches the authenticated
    // paths (offers, answers, relay frames, relay credentials).
    let mut server = Server::new(ServerConfig::new(
        KeyPair::from_seed(&[8; 32]),
        "fuzz",
        [3; 32],
    ));
    let conn = ConnId(1);
    server.handle_connect(now, conn);
    node.handle_signal(now, SignalInput::Opened);
    for _ in 0..8 {
        while let Some(out) = node.poll_signal() {
            if let SignalOutput::Frame(frame) = out {
                server.handle_frame(now, conn, &frame);
            }
        }
        while let Some(out) = server.poll_output() {
            if let Output::Send { frame, .. } = out {
                node.handle_signal(now, SignalInput::Frame(&frame));
            }
        }
    }
    assert!(
        node.signaling_up(),
        "the handshake with a real server completes"
    );
    let peer_key = KeyPair::from_seed(&[7; 32]);
    let peer = peer_key.peer_id();
    for op in ops.into_iter().take(200) {
        match op {
            Op::Datagram {
                from,
                from_port,
                port,
                bytes,
            } => {
                let source =
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, from % 4)), from_port);
                let local = SocketAddr::new(base.ip(), base.port() + u16::from(port % 12));
                datagram(&mut node, now, source, local, &bytes);
            }
            Op::Frame(text) => node.handle_signal(now, SignalInput::Frame(&text)),
            Op::Relay { session, data } => {
                use base64::Engine as _;
                let data = base64::engine::general_purpose::STANDARD.encode(data);
                let frame = format!(
                    r#"{{"type":"relay","session":"{}","data":"{data}"}}"#,
                    hex(&session)
                );
                node.handle_signal(now, SignalInput::Frame(&frame));
            }
            Op::Offer {
                session,
                port,
                nat: n,
                signed,
                mapped,
            } => {
                let mapped = if mapped {
                    format!(
                        r#"{{"kind":"mapped","addr":"203.0.113.9:{}","priority":1778384895}},"#,
                        port ^ 1
                    )
                } else {
                    String::new()
                };
                let mut frame = format!(
                    r#"{{"type":"offer","session":"{}","from":"{peer}","description":{{"candidates":[{mapped}{{"kind":"srflx","addr":"203.0.113.9:{port}","priority":1694498815}},{{"kind":"relay","addr":"198.51.100.3:{port}","priority":16777215}}],"nat":{},"transports":["quic"],"credentials":{{"ufrag":"abcd","pwd":""}},"service":1}}}}"#,
                    hex(&session),
                    nat(n)
                );
                if signed {
                    frame = sign_offer(&frame, &peer_key, node.peer_id(), port);
                }
                node.handle_signal(now, SignalInput::Frame(&frame));
            }
            Op::Gateway { from_port, bytes } => {
                let source = SocketAddr::new(IpAddr::V4(GATEWAY), from_port % 4 + 5350);
                let source = if from_port & 0x100 != 0 {
                    SocketAddr::new(source.ip(), 1900)
                } else {
                    source
                };
                datagram(&mut node, now, source, base, &bytes);
            }
            Op::Tcp { id, input, bytes } => {
                let input = match input % 4 {
                    0 => TcpInput::Connected,
                    1 => TcpInput::Data(&bytes),
                    2 => TcpInput::Closed,
                    _ => TcpInput::Failed,
                };
                node.handle_tcp(now, TcpId(u32::from(id % 8)), input);
            }
            Op::ClosePortMapping => node.close_port_mapping(now),
            Op::Open => node.handle_signal(now, SignalInput::Opened),
            Op::Closed => node.handle_signal(now, SignalInput::Closed),
            Op::Connect(n) => {
                let _ = node.connect(now, KeyPair::from_seed(&[n; 32]).peer_id(), 1);
            }
            Op::Accept(i) => {
                if let Some(id) = nth(&node, i) {
                    let _ = node.accept(now, id);
                }
            }
            Op::Refuse(i) => {
                if let Some(id) = nth(&node, i) {
                    let _ = node.refuse(now, id, 7, "no");
                }
            }
            Op::Close(i) => {
                if let Some(id) = nth(&node, i) {
                    let _ = node.close(now, id, 0, "bye");
                }
            }
            Op::Send(i, len) => {
                if let Some(id) = nth(&node, i) {
                    let _ = node.send(now, id, &vec![0x5a; usize::from(len % 1_500)]);
                }
            }
            Op::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
            Op::Interfaces(mask) => node.set_interfaces(now, &interfaces(mask)),
            Op::Regather => node.regather(now),
            Op::DatagramOn { which, from, bytes } => {
                let ips = interfaces(0xff);
                let local = SocketAddr::new(ips[usize::from(which % 3)], base.port());
                let source = if local.is_ipv6() {
                    SocketAddr::new("2001:db8::9".parse().unwrap(), 5000 + u16::from(from))
                } else {
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, from % 4)), 5000)
                };
                datagram(&mut node, now, source, local, &bytes);
            }
        }
        while node.poll_socket_request().is_some() {}
        while node.poll_tcp().is_some() {}
        node.handle_timeout(now);
        while node.poll_transmit(now, &mut buf).is_some() {}
        while node.poll_signal().is_some() {}
        while node.poll_event().is_some() {}
        if let Some(t) = node.poll_timeout() {
            assert!(t >= now, "asked to be woken in the past");
        }
    }
});
