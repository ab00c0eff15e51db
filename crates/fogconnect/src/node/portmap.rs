//! Port mapping of the base socket (fog-portmap's [`PortMapper`]: PCP, NAT-PMP, UPnP IGD),
//! and the probe that verifies a mapping before it is offered.
//!
//! A router may grant a mapping that does not forward (a renewal that silently stopped
//! working, a second NAT upstream whose address the router does not know), so a mapped
//! address becomes a [`Kind::Mapped`] candidate only once something from outside has come
//! through it. The probe is plain RFC 5780: a Binding request from the base socket to the
//! STUN server with CHANGE-REQUEST (change IP and port, §7.2) and RESPONSE-PORT (§7.5) set to
//! the mapped port, which the server answers from its other address to the mapped port of
//! the IP the request came from. The answer is recognised by its transaction ID (96 bits
//! from the node's generator) arriving on the base socket. The server can only ever send one
//! answer per request, to the requester's own IP (RESPONSE-PORT moves the port, never the
//! IP), under its per-source rate limit; see docs/ARCHITECTURE.md "Port mapping" for why
//! that keeps it from being a reflector for others.

use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use fog_ice::candidate::{Candidate, Kind};
use fog_portmap::{Event as MapEvent, PortMapper, TcpCommand, TcpId, TcpInput};
use fog_signal::msg::CandidateKind;
use fog_stun::wire::{BindingRequest, BindingResponse, TransactionId};

use super::{ConnectionId, Node};

/// The probe request is sent this often...
const PROBE_RTO: Duration = Duration::from_millis(250);
/// ...this many times (RFC 5389 §7.2.1's first retransmissions, shortened: the server is the
/// one discovery just measured).
const PROBE_TRIES: u32 = 6;

/// The node's port mapping: the mapper and where its mapping stands.
#[derive(Debug)]
pub(super) struct PortMap {
    mapper: PortMapper,
    state: State,
}

#[derive(Debug)]
enum State {
    /// No public mapping (yet, or any more).
    Unmapped,
    /// Mapped at `external`, waiting for our server-reflexive address to probe from;
    /// `offered` for a renewal of what we offer, which stays offered while it is verified again.
    Mapped {
        external: SocketAddrV4,
        offered: bool,
    },
    /// The probe to `external` is on its way; `offered` when an earlier probe to the same
    /// address came through (a renewal is verified again, and withdrawn if it fails).
    Probing {
        external: SocketAddrV4,
        id: TransactionId,
        next_at: Instant,
        sent: u32,
        offered: bool,
    },
    /// The probe came through: `external` is offered.
    Verified { external: SocketAddrV4 },
    /// The probe never came: not offered (counted in `port_mappings_unverified`).
    Unverified,
    /// Deleting the mapping (shutdown).
    Closing,
}

impl PortMap {
    /// The address offered, if any.
    fn offered(&self) -> Option<SocketAddrV4> {
        match self.state {
            State::Verified { external }
            | State::Mapped {
                external,
                offered: true,
            }
            | State::Probing {
                external,
                offered: true,
                ..
            } => Some(external),
            _ => None,
        }
    }
}

impl Node {
    /// Starts the port mapper when [`NodeConfig::port_mapping`](super::NodeConfig) names a
    /// gateway and the base socket has an IPv4 address of its own.
    pub(super) fn start_port_mapping(&mut self, now: Instant) {
        let Some(gateway) = self.config.port_mapping else {
            return;
        };
        let SocketAddr::V4(internal) = self.config.base else {
            return;
        };
        // A loopback base has no router to ask (and nothing it sends could reach one).
        if internal.ip().is_unspecified() || internal.ip().is_loopback() || internal.port() == 0 {
            return;
        }
        let seed = self.next_random();
        let config = fog_portmap::Config::new(gateway, internal, seed);
        self.portmap = Some(PortMap {
            mapper: PortMapper::new(now, config),
            state: State::Unmapped,
        });
        self.drain_port_mapping(now);
    }

    /// The verified mapped address we offer, if any.
    pub(super) fn mapped_candidate(&self) -> Option<SocketAddr> {
        self.portmap
            .as_ref()
            .and_then(PortMap::offered)
            .map(SocketAddr::V4)
    }

    /// Deletes the port mapping (PCP and NAT-PMP with lifetime 0, UPnP's DeletePortMapping):
    /// what a driver calls as it shuts down, a little before it stops driving the node (the
    /// deletion waits at most one UDP or HTTP timeout for an answer). The mapped candidate is
    /// withdrawn.
    pub fn close_port_mapping(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let Some(map) = &mut self.portmap else {
            return;
        };
        let offered = map.offered();
        map.state = State::Closing;
        map.mapper.close(now);
        if let Some(gone) = offered {
            self.withdraw_mapped(now, gone);
        }
        self.drain_port_mapping(now);
    }

    /// Whether a port mapper runs (or is still deleting its mapping after
    /// [`close_port_mapping`](Self::close_port_mapping)): a driver that shuts down keeps
    /// driving the node a little while this holds.
    pub fn port_mapping_active(&self) -> bool {
        self.portmap.is_some()
    }

    /// The next TCP connection command of the port mapper (UPnP's HTTP): a driver that opens
    /// TCP connections drains these after every input, like the transmits, and reports their
    /// progress with [`handle_tcp`](Self::handle_tcp). A driver that does not leaves UPnP
    /// unused (its exchanges time out; PCP and NAT-PMP still work).
    pub fn poll_tcp(&mut self) -> Option<TcpCommand> {
        self.portmap.as_mut().and_then(|m| m.mapper.poll_tcp())
    }

    /// Progress of a TCP connection [`poll_tcp`](Self::poll_tcp) asked for.
    pub fn handle_tcp(&mut self, now: Instant, id: TcpId, input: TcpInput<'_>) {
        self.now = self.now.max(now);
        if let Some(map) = &mut self.portmap {
            map.mapper.handle_tcp(now, id, input);
            self.drain_port_mapping(now);
        }
    }

    /// The port mapper's answers from the gateway (PCP and NAT-PMP from its port 5351, SSDP
    /// from port 1900: text that `fog_core::classify` would take for QUIC), or the probe's
    /// answer. Looked at before anything else on the socket.
    pub(super) fn handle_port_mapping_packet(
        &mut self,
        now: Instant,
        packet: &Receive<'_>,
    ) -> bool {
        let Some(map) = &mut self.portmap else {
            return false;
        };
        // The mapper also takes SSDP answers from others (a second device on the LAN), which
        // it counts and drops; a peer whose port happens to be 1900 stays ours.
        let gateway = self.config.port_mapping.map(IpAddr::V4);
        let ours = Some(packet.source.ip()) == gateway || packet.payload.starts_with(b"HTTP/");
        if ours && map.mapper.accepts(packet) {
            map.mapper.handle_packet(now, *packet);
            self.drain_port_mapping(now);
            return true;
        }
        let State::Probing { external, id, .. } = map.state else {
            return false;
        };
        if packet.local != self.config.base {
            return false;
        }
        let answered = BindingResponse::decode(packet.payload)
            .ok()
            .flatten()
            .is_some_and(|r| r.transaction_id == id && r.error.is_none());
        if !answered {
            return false;
        }
        let was_offered = map.offered().is_some();
        map.state = State::Verified { external };
        if !was_offered {
            self.counters.port_mappings_verified += 1;
            let added = vec![Candidate::new(Kind::Mapped, SocketAddr::V4(external))];
            self.changed(added, Vec::new());
            self.replan_all(now);
        }
        true
    }

    pub(super) fn port_mapping_timeout(&mut self, now: Instant) {
        let Some(map) = &mut self.portmap else {
            return;
        };
        map.mapper.handle_timeout(now);
        if let State::Probing {
            sent,
            next_at,
            offered,
            external,
            ..
        } = map.state
        {
            if sent >= PROBE_TRIES && now >= next_at {
                map.state = State::Unverified;
                self.counters.port_mappings_unverified += 1;
                if offered {
                    self.withdraw_mapped(now, external);
                }
            }
        }
        self.drain_port_mapping(now);
    }

    pub(super) fn port_mapping_transmit(
        &mut self,
        now: Instant,
        buf: &mut [u8],
    ) -> Option<Transmit> {
        let map = self.portmap.as_mut()?;
        if let Some(t) = map.mapper.poll_transmit(now, buf) {
            return Some(t.from_source(self.config.base));
        }
        if let State::Probing {
            external,
            id,
            next_at,
            sent,
            ..
        } = &mut map.state
        {
            if *sent < PROBE_TRIES && now >= *next_at {
                *sent += 1;
                *next_at = now + PROBE_RTO;
                let mut request = BindingRequest::new(*id);
                request.change_ip = true;
                request.change_port = true;
                request.response_port = Some(external.port());
                let len = request.encode(buf).ok()?;
                return Some(Transmit::new(self.config.stun, len).from_source(self.config.base));
            }
        }
        None
    }

    /// The mapper's next deadline or the probe's next (re)transmission, whichever is first.
    pub(super) fn port_mapping_deadline(&self) -> Option<Instant> {
        let map = self.portmap.as_ref()?;
        let probe = match map.state {
            State::Probing { next_at, .. } => Some(next_at),
            _ => None,
        };
        map.mapper.poll_timeout().into_iter().chain(probe).min()
    }

    /// Hands the mapper's events on, and starts a probe when there is a mapping to verify and
    /// our server-reflexive IP is known (and is the mapping's: a router whose external IP is
    /// not the one the STUN server sees sits behind another NAT, and the probe could not go
    /// anywhere else anyway).
    pub(super) fn drain_port_mapping(&mut self, now: Instant) {
        let Some(map) = &mut self.portmap else {
            return;
        };
        let mut withdrawn = None;
        let mut closed = false;
        while let Some(event) = map.mapper.poll_event() {
            match event {
                MapEvent::Mapped(mapping) => {
                    if matches!(map.state, State::Closing) {
                        continue;
                    }
                    let offered = map.offered();
                    if offered.is_some_and(|o| o != mapping.external) {
                        withdrawn = offered;
                    }
                    // A renewal of what we offer is verified again, and stays offered
                    // meanwhile.
                    map.state = State::Mapped {
                        external: mapping.external,
                        offered: offered == Some(mapping.external),
                    };
                }
                MapEvent::Lost { .. } | MapEvent::NotPublic(_) | MapEvent::Failed => {
                    if !matches!(map.state, State::Closing) {
                        withdrawn = withdrawn.or(map.offered());
                        map.state = State::Unmapped;
                    }
                }
                MapEvent::Closed => closed = true,
                MapEvent::Answer { .. } => {}
            }
        }
        let srflx_ip = self.report.as_ref().and_then(|r| r.mapped).map(|a| a.ip());
        let waiting = match self.portmap.as_ref().map(|m| &m.state) {
            Some(&State::Mapped { external, offered }) => Some((external, offered)),
            _ => None,
        };
        if let (Some((external, offered)), Some(srflx_ip)) = (waiting, srflx_ip) {
            let state = if srflx_ip == IpAddr::V4(*external.ip()) {
                let mut id = [0u8; 12];
                id[..8].copy_from_slice(&self.next_random().to_le_bytes());
                id[8..].copy_from_slice(&self.next_random().to_le_bytes()[..4]);
                State::Probing {
                    external,
                    id: TransactionId::new(id),
                    next_at: now,
                    sent: 0,
                    offered,
                }
            } else {
                self.counters.port_mappings_unverified += 1;
                if offered {
                    withdrawn = withdrawn.or(Some(external));
                }
                State::Unverified
            };
            if let Some(map) = &mut self.portmap {
                map.state = state;
            }
        }
        if closed {
            self.portmap = None;
        }
        if let Some(gone) = withdrawn {
            self.withdraw_mapped(now, gone);
        }
    }

    /// Our mapped candidate at `gone` is no longer offered: reported as removed, and the
    /// connections without a path plan again without it. The peers keep it: signaling has no
    /// way to take a candidate back (a `candidate` of `null` ends the trickle), so theirs
    /// fail their checks to it, and a path on it moves to another when consent lapses.
    fn withdraw_mapped(&mut self, now: Instant, gone: SocketAddrV4) {
        self.changed(Vec::new(), vec![SocketAddr::V4(gone)]);
        self.replan_all(now);
    }

    /// Every connection still without a path plans again (a mapping of ours came or went).
    fn replan_all(&mut self, now: Instant) {
        // `replan` leaves alone those that have a path or no agent yet.
        let ids: Vec<ConnectionId> = self.conns.keys().copied().collect();
        for id in ids {
            self.replan(now, id);
        }
    }
}

/// Whether the peer's description names a mapped candidate (it is then planned as open).
pub(super) fn has_mapped(candidates: &[fog_signal::msg::Candidate]) -> bool {
    candidates.iter().any(|c| c.kind == CandidateKind::Mapped)
}

#[cfg(test)]
mod tests {
    // Tests may read the clock; the node only ever sees the instants they pass.
    #![allow(clippy::disallowed_methods)]

    use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
    use std::time::{Duration, Instant};

    use fog_core::{Receive, SansIo};
    use fog_portmap::TcpCommand;
    use fog_signal::KeyPair;

    use crate::node::{Node, NodeConfig};

    const GATEWAY: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 1);

    fn started(mapping: bool) -> (Node, Instant, SocketAddr) {
        let base: SocketAddr = "192.168.1.20:4000".parse().unwrap();
        let stun = "203.0.113.1:3478".parse().unwrap();
        let mut config = NodeConfig::new(KeyPair::from_seed(&[1; 32]), "test", stun, base, 5);
        config.port_mapping = mapping.then_some(GATEWAY);
        let now = Instant::now();
        let mut node = Node::new(config, now);
        node.handle_timeout(now);
        (node, now, base)
    }

    /// Every datagram the node has to send now: (from, to, bytes).
    fn sent(node: &mut Node, now: Instant) -> Vec<(Option<SocketAddr>, SocketAddr, Vec<u8>)> {
        let mut buf = vec![0u8; 2048];
        let mut out = Vec::new();
        while let Some(t) = node.poll_transmit(now, &mut buf) {
            out.push((t.source, t.destination, buf[..t.len].to_vec()));
        }
        out
    }

    #[test]
    fn the_base_socket_is_mapped_only_when_configured() {
        let pcp = SocketAddr::from((GATEWAY, 5351));
        let (mut node, now, base) = started(true);
        let out = sent(&mut node, now);
        // RFC 6887 §11.1: version 2, MAP (opcode 1) request, from the base socket.
        assert!(
            out.iter()
                .any(|(from, to, b)| *to == pcp && *from == Some(base) && b[..2] == [2, 1]),
            "{out:?}"
        );
        let (mut node, now, _) = started(false);
        let out = sent(&mut node, now);
        assert!(
            out.iter()
                .all(|(_, to, _)| to.ip() != std::net::IpAddr::V4(GATEWAY) && to.port() != 1900),
            "{out:?}"
        );
    }

    #[test]
    fn the_gateways_ssdp_answer_goes_to_the_mapper_before_the_first_byte_demux() {
        let (mut node, now, base) = started(true);
        let _ = sent(&mut node, now);
        // 'H' would be QUIC to `fog_core::classify`.
        let answer = b"HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\n\
            LOCATION: http://192.168.1.1:5000/rootDesc.xml\r\n\
            ST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\
            USN: uuid:1::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n\r\n";
        // The same bytes from a peer's port 1900 are not the mapper's.
        let peer = "198.51.100.9:1900".parse().unwrap();
        let not_http = [0x07u8; 40];
        node.handle_packet(
            now,
            Receive {
                source: peer,
                local: base,
                payload: &not_http,
            },
        );
        assert_eq!(node.poll_tcp(), None);
        node.handle_packet(
            now,
            Receive {
                source: SocketAddr::from((GATEWAY, 1900)),
                local: base,
                payload: answer,
            },
        );
        // UPnP's description is fetched over TCP, which the driver opens.
        match node.poll_tcp() {
            Some(TcpCommand::Connect { remote, .. }) => {
                assert_eq!(remote, SocketAddrV4::new(GATEWAY, 5000));
            }
            other => panic!("expected a TCP connect, got {other:?}"),
        }
        // Nothing is offered before a mapping is made and verified.
        assert_eq!(node.mapped_candidate(), None);
    }

    /// A scripted world: the gateway answers PCP (granting `lifetime` while `router_up`), the
    /// STUN server answers every Binding from its primary address, and a probe (RESPONSE-PORT)
    /// from its other address when `forwards`.
    struct World {
        router_up: bool,
        forwards: bool,
        probes: u32,
    }

    const PUBLIC: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 50);
    const EXTERNAL_PORT: u16 = 41_000;

    /// Runs `node` in `world` from `now` until `until`; its events.
    fn run(
        node: &mut Node,
        world: &mut World,
        mut now: Instant,
        until: Instant,
    ) -> (Instant, Vec<crate::node::Event>) {
        use fog_portmap::pcp;
        use fog_stun::wire::{BindingResponse, Message};
        let stun: SocketAddr = "203.0.113.1:3478".parse().unwrap();
        let stun_other: SocketAddr = "203.0.113.2:3479".parse().unwrap();
        let base: SocketAddr = "192.168.1.20:4000".parse().unwrap();
        let mut events = Vec::new();
        loop {
            let mut replies: Vec<(SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
            for (from, to, bytes) in sent(node, now) {
                let from = from.unwrap_or(base);
                if to == SocketAddr::from((GATEWAY, 5351)) && world.router_up {
                    if let Ok(request) = pcp::parse_map_request(&bytes) {
                        let response = pcp::Response {
                            opcode: 1,
                            result: pcp::ResultCode(0),
                            lifetime: request.lifetime.min(120),
                            epoch: 1,
                            map: Some(pcp::MapData {
                                nonce: request.nonce,
                                protocol: request.protocol,
                                internal_port: request.internal_port,
                                external_port: EXTERNAL_PORT,
                                external_ip: pcp::mapped(PUBLIC),
                            }),
                        };
                        let mut buf = [0u8; 64];
                        let len = response.emit(&mut buf);
                        replies.push((to, from, buf[..len].to_vec()));
                    }
                } else if to == stun {
                    let Ok(request) = Message::decode(&bytes) else {
                        continue;
                    };
                    let public = SocketAddr::from((PUBLIC, 50_000 + from.port() % 1000));
                    let response = BindingResponse {
                        transaction_id: request.transaction_id,
                        xor_mapped: Some(public),
                        ..BindingResponse::default()
                    };
                    let mut buf = [0u8; 256];
                    let len = response.encode(&mut buf).unwrap();
                    match request.attributes.response_port {
                        Some(port) => {
                            assert_eq!(port, EXTERNAL_PORT, "the probe goes to the mapping");
                            world.probes += 1;
                            if world.forwards {
                                replies.push((stun_other, base, buf[..len].to_vec()));
                            }
                        }
                        None => replies.push((stun, from, buf[..len].to_vec())),
                    }
                }
            }
            for (source, local, payload) in &replies {
                node.handle_packet(
                    now,
                    Receive {
                        source: *source,
                        local: *local,
                        payload,
                    },
                );
            }
            while node.poll_tcp().is_some() {}
            while let Some(event) = node.poll_event() {
                events.push(event);
            }
            if !replies.is_empty() {
                continue;
            }
            match node.poll_timeout() {
                Some(t) if t <= until => {
                    now = now.max(t);
                    node.handle_timeout(now);
                }
                _ => return (until, events),
            }
        }
    }

    fn mapped_changes(events: &[crate::node::Event]) -> (Vec<SocketAddr>, Vec<SocketAddr>) {
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for e in events {
            if let crate::node::Event::CandidatesChanged {
                added: a,
                removed: r,
            } = e
            {
                added.extend(
                    a.iter()
                        .filter(|c| c.kind == fog_ice::candidate::Kind::Mapped)
                        .map(|c| c.addr),
                );
                removed.extend(r.iter().copied());
            }
        }
        (added, removed)
    }

    #[test]
    fn a_mapping_is_offered_once_the_probe_comes_through_and_withdrawn_when_lost() {
        let external = SocketAddr::from((PUBLIC, EXTERNAL_PORT));
        let (mut node, now, _) = started(true);
        let mut world = World {
            router_up: true,
            forwards: true,
            probes: 0,
        };
        let (now, events) = run(&mut node, &mut world, now, now + Duration::from_secs(5));
        assert!(world.probes >= 1);
        assert_eq!(mapped_changes(&events), (vec![external], vec![]));
        assert_eq!(node.mapped_candidate(), Some(external));
        assert_eq!(node.counters().port_mappings_verified, 1);

        // Renewals (at half of the 120 s granted) keep it, each verified again.
        let (now, events) = run(&mut node, &mut world, now, now + Duration::from_secs(100));
        assert_eq!(mapped_changes(&events), (vec![], vec![]));
        assert!(world.probes >= 2, "renewals are probed again");
        assert_eq!(node.mapped_candidate(), Some(external));

        // The router goes silent: the mapping lapses and the candidate is withdrawn.
        world.router_up = false;
        let (_, events) = run(&mut node, &mut world, now, now + Duration::from_secs(300));
        assert_eq!(mapped_changes(&events), (vec![], vec![external]));
        assert_eq!(node.mapped_candidate(), None);
    }

    #[test]
    fn a_mapping_the_probe_does_not_come_through_is_never_offered() {
        let (mut node, now, _) = started(true);
        let mut world = World {
            router_up: true,
            forwards: false,
            probes: 0,
        };
        let (_, events) = run(&mut node, &mut world, now, now + Duration::from_secs(10));
        assert!(world.probes >= 2, "the probe is retransmitted");
        assert_eq!(mapped_changes(&events), (vec![], vec![]));
        assert_eq!(node.mapped_candidate(), None);
        assert_eq!(node.counters().port_mappings_unverified, 1);
    }
}
