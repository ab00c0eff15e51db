//! The `fog_portmap` mapper fed arbitrary datagrams from the gateway (raw, or PCP/NAT-PMP
//! answers built from parts, with the nonce of its real request or not), SSDP answers, TCP
//! progress with arbitrary HTTP bytes, the passing of time and `close`.
//!
//! Invariants: nothing panics; no deadline is in the past; a closed mapper stays closed and
//! asks for no more wake-ups; a `Mapped` event carries a public address.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use fog_core::{Receive, SansIo};
use fog_portmap::{Config, Event, PortMapper, TcpCommand, TcpId, TcpInput, natpmp, pcp};
use libfuzzer_sys::fuzz_target;

const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

#[derive(Debug, Arbitrary)]
enum Op {
    Raw {
        port: u16,
        from_gateway: bool,
        payload: Vec<u8>,
    },
    Pcp {
        result: u8,
        lifetime: u32,
        use_nonce: bool,
        external: [u8; 4],
        port: u16,
    },
    NatPmp {
        map: bool,
        result: u16,
        external: [u8; 4],
        port: u16,
        lifetime: u32,
    },
    Ssdp {
        location: String,
    },
    Tcp {
        which: u8,
        input: u8,
        data: Vec<u8>,
    },
    Wait(u16),
    Close,
}

fuzz_target!(|ops: Vec<Op>| {
    // The epoch of the run's virtual time; only offsets from it matter.
    #[allow(clippy::disallowed_methods)]
    let start = Instant::now();
    let mut now = start;
    let internal = SocketAddrV4::new(Ipv4Addr::new(192, 168, 1, 20), 4000);
    let mut mapper = PortMapper::new(now, Config::new(GATEWAY, internal, 1));
    let local = SocketAddr::new(IpAddr::V4(*internal.ip()), 40000);
    let mut buf = vec![0u8; 65_535];
    let mut nonce = [0u8; 12];
    let mut connections: Vec<TcpId> = Vec::new();
    let mut closed = false;
    for op in ops.into_iter().take(64) {
        let gateway = |port| SocketAddr::new(IpAddr::V4(GATEWAY), port);
        let mut packet: Option<(SocketAddr, Vec<u8>)> = None;
        match op {
            Op::Raw {
                port,
                from_gateway,
                payload,
            } => {
                let source = if from_gateway {
                    gateway(port)
                } else {
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 168, 1, 9)), port)
                };
                packet = Some((source, payload));
            }
            Op::Pcp {
                result,
                lifetime,
                use_nonce,
                external,
                port,
            } => {
                let mut b = [0u8; pcp::MAP_LEN];
                let n = pcp::Response {
                    opcode: pcp::OPCODE_MAP,
                    result: pcp::ResultCode(result),
                    lifetime,
                    epoch: 0,
                    map: Some(pcp::MapData {
                        nonce: if use_nonce { nonce } else { [1; 12] },
                        protocol: pcp::PROTO_UDP,
                        internal_port: internal.port(),
                        external_port: port,
                        external_ip: pcp::mapped(Ipv4Addr::from(external)),
                    }),
                }
                .emit(&mut b);
                packet = Some((gateway(pcp::SERVER_PORT), b[..n].to_vec()));
            }
            Op::NatPmp {
                map,
                result,
                external,
                port,
                lifetime,
            } => {
                let response = match (map, result) {
                    (_, r) if r != 0 => natpmp::Response::Error {
                        opcode: u8::from(map),
                        result: natpmp::ResultCode(r),
                    },
                    (false, _) => natpmp::Response::ExternalAddress {
                        epoch: 0,
                        ip: Ipv4Addr::from(external),
                    },
                    (true, _) => natpmp::Response::Map {
                        opcode: 1,
                        epoch: 0,
                        internal_port: internal.port(),
                        external_port: port,
                        lifetime,
                    },
                };
                let mut b = [0u8; 16];
                let n = response.emit(&mut b);
                packet = Some((gateway(natpmp::SERVER_PORT), b[..n].to_vec()));
            }
            Op::Ssdp { location } => {
                let text = format!(
                    "HTTP/1.1 200 OK\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nLOCATION: {location}\r\n\r\n"
                );
                packet = Some((gateway(1900), text.into_bytes()));
            }
            Op::Tcp { which, input, data } => {
                if let Some(&id) = connections.get(usize::from(which) % connections.len().max(1)) {
                    let input = match input % 4 {
                        0 => TcpInput::Connected,
                        1 => TcpInput::Data(&data),
                        2 => TcpInput::Closed,
                        _ => TcpInput::Failed,
                    };
                    mapper.handle_tcp(now, id, input);
                } else {
                    mapper.handle_tcp(now, TcpId(u32::from(which)), TcpInput::Data(&data));
                }
            }
            Op::Wait(ms) => {
                now += Duration::from_millis(u64::from(ms) * 16);
                mapper.handle_timeout(now);
            }
            Op::Close => mapper.close(now),
        }
        if let Some((source, payload)) = packet {
            let receive = Receive {
                source,
                local,
                payload: &payload,
            };
            if mapper.accepts(&receive) {
                mapper.handle_packet(now, receive);
            }
        }
        while let Some(command) = mapper.poll_tcp() {
            match command {
                TcpCommand::Connect { id, remote } => {
                    assert_eq!(*remote.ip(), GATEWAY, "UPnP only talks to the gateway");
                    connections.push(id);
                }
                TcpCommand::Send { .. } => {}
                TcpCommand::Close { id } => connections.retain(|c| *c != id),
            }
        }
        while let Some(t) = mapper.poll_transmit(now, &mut buf) {
            if t.len == pcp::MAP_LEN && buf[0] == pcp::VERSION {
                nonce.copy_from_slice(&buf[24..36]);
            }
        }
        while let Some(event) = mapper.poll_event() {
            assert!(!closed, "an event after Closed: {event:?}");
            match event {
                Event::Mapped(m) => assert!(fog_portmap::is_public(*m.external.ip())),
                Event::Closed => closed = true,
                _ => {}
            }
        }
        if let Some(deadline) = mapper.poll_timeout() {
            assert!(!closed, "a closed mapper wants a wake-up");
            assert!(deadline >= now, "a deadline in the past");
        }
    }
});
