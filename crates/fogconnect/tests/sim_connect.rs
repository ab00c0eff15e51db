//! Two nodes behind simulated NATs connect by peer ID: each runs RFC 5780 discovery against a
//! two-address STUN server, authenticates to the signaling server over the simulator's channel,
//! and then one calls `connect`; offer, answer and punch sync go through the server, and both
//! must report the same verified direct path. Everything in virtual time, from a seed.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use fog_signal::server::{Server as SignalServer, ServerConfig as SignalConfig};
use fog_signal::{KeyPair, PeerId};
use fog_sim::link::LinkConfig;
use fog_sim::presets::{Preset, Site};
use fog_sim::signal::{Closed, Request, SignalLink, SignalNode};
use fog_sim::{NodeId, Sim};
use fog_stun::server::{Server as StunServer, ServerConfig as StunConfig};
use fogconnect::{Event, Node, NodeConfig};

const REALM: &str = "signal.example";
const BASE_PORT: u16 = 5000;

/// The node with the simulator's signaling hooks.
#[derive(Debug)]
struct SimNode {
    node: Node,
    asked: bool,
}

impl SansIo for SimNode {
    type Event = Event;
    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        self.node.handle_packet(now, packet);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.node.poll_transmit(now, buf)
    }
    fn poll_event(&mut self) -> Option<Event> {
        self.node.poll_event()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.node.poll_timeout()
    }
}

impl SignalNode for SimNode {
    fn handle_signal_open(&mut self, now: Instant) {
        self.node.handle_signal_open(now);
    }
    fn handle_signal_frame(&mut self, now: Instant, frame: &str) {
        self.node.handle_signal_frame(now, frame);
    }
    fn handle_signal_closed(&mut self, now: Instant, _why: Closed) {
        self.node.handle_signal_closed(now);
    }
    fn poll_signal_frame(&mut self) -> Option<String> {
        self.node.poll_signal_frame()
    }
    fn poll_signal_request(&mut self) -> Option<Request> {
        if self.asked {
            return None;
        }
        self.asked = true;
        Some(Request::Connect)
    }
}

struct World {
    sim: Sim,
    a: (Site, PeerId),
    b: (Site, PeerId),
}

fn world(a: Preset, b: Preset, seed: u64) -> World {
    let mut sim = Sim::new(seed);
    // RFC 5780 server on two addresses, two ports.
    let a1: IpAddr = "198.51.100.1".parse().unwrap();
    let a2: IpAddr = "198.51.100.2".parse().unwrap();
    let stun = sim.add_host(
        "stun",
        NodeId::INTERNET,
        &[a1, a2],
        LinkConfig::with_latency(Duration::from_millis(15)),
    );
    let primary = SocketAddr::new(a1, 3478);
    sim.set_machine(
        stun,
        3478,
        StunServer::new(StunConfig::new(primary).with_alternate(a2, 3479)),
    );
    sim.set_signal_server(SignalServer::new(SignalConfig::new(
        KeyPair::from_seed(&[200; 32]),
        REALM,
        [seed as u8; 32],
    )));
    let wan = LinkConfig::with_latency(Duration::from_millis(10));
    let mut add = |preset: Preset, name: &str, n: u8| {
        let site = preset.attach(&mut sim, name, n, wan.clone());
        let key = KeyPair::from_seed(&[n; 32]);
        let peer = key.peer_id();
        let base = SocketAddr::new(site.host_addr, BASE_PORT);
        let config = NodeConfig::new(key, REALM, primary, base, seed ^ u64::from(n));
        let node = Node::new(config, sim.now());
        sim.set_signal_machine(site.host, BASE_PORT, SimNode { node, asked: false });
        sim.set_signal_link(
            site.host,
            SignalLink::with_latency(Duration::from_millis(30 + 5 * u64::from(n))),
        );
        (site, peer)
    };
    let a = add(a, "a", 1);
    let b = add(b, "b", 2);
    World { sim, a, b }
}

fn ready(events: &[(Instant, Event)]) -> bool {
    events.iter().any(|(_, e)| matches!(e, Event::Ready { .. }))
        && events.iter().any(|(_, e)| *e == Event::SignalingUp)
}

fn connected(events: &[(Instant, Event)]) -> Option<(Instant, SocketAddr, SocketAddr)> {
    events.iter().find_map(|(t, e)| match e {
        Event::Connected { local, remote, .. } => Some((*t, *local, *remote)),
        _ => None,
    })
}

/// How a connection went: the time from `connect` to the second `Connected`, and each side's
/// (local, remote) path.
struct Connection {
    took: Duration,
    paths: [(SocketAddr, SocketAddr); 2],
}

/// Runs until both nodes are ready, then connects A to B.
fn connect(a: Preset, b: Preset, seed: u64) -> Connection {
    let mut w = world(a, b, seed);
    let mut ea = Vec::new();
    let mut eb = Vec::new();
    for _ in 0..100 {
        w.sim.run_for(Duration::from_millis(100));
        ea.extend(w.sim.take_events::<Event>(w.a.0.host));
        eb.extend(w.sim.take_events::<Event>(w.b.0.host));
        if ready(&ea) && ready(&eb) {
            break;
        }
    }
    assert!(
        ready(&ea) && ready(&eb),
        "{} / {}: not ready: {ea:?} {eb:?}",
        a.name(),
        b.name()
    );
    let to = w.b.1;
    let start = w.sim.now();
    w.sim.with_machine(w.a.0.host, |m: &mut SimNode, now| {
        m.node.connect(now, to, 7)
    });
    w.sim.run_for(Duration::from_secs(8));
    ea.extend(w.sim.take_events::<Event>(w.a.0.host));
    eb.extend(w.sim.take_events::<Event>(w.b.0.host));
    let (ta, la, ra) = connected(&ea)
        .unwrap_or_else(|| panic!("{} / {}: A not connected: {ea:?}", a.name(), b.name()));
    let (tb, lb, rb) = connected(&eb)
        .unwrap_or_else(|| panic!("{} / {}: B not connected: {eb:?}", a.name(), b.name()));
    Connection {
        took: ta.max(tb) - start,
        paths: [(la, ra), (lb, rb)],
    }
}

#[test]
fn cone_nodes_connect_directly() {
    for (a, b) in [
        (Preset::PortRestrictedCone, Preset::PortRestrictedCone),
        (Preset::FullCone, Preset::OpenInternet),
        (Preset::RestrictedCone, Preset::PortRestrictedCone),
    ] {
        let Connection { took, paths } = connect(a, b, 1);
        assert_eq!(paths[0].1.ip().to_string(), "203.0.113.2", "{paths:?}");
        assert_eq!(paths[1].1.ip().to_string(), "203.0.113.1", "{paths:?}");
        // Offer and answer through the server (35 + 40 ms one way each, twice) plus punch sync
        // and a peer round trip: well under a second.
        assert!(
            took < Duration::from_secs(1),
            "{} / {}: {took:?}",
            a.name(),
            b.name()
        );
    }
}

#[test]
fn sequential_nodes_connect_by_prediction() {
    for (a, b) in [
        (Preset::PortRestrictedCone, Preset::SymmetricSequential),
        (Preset::SymmetricSequential, Preset::SymmetricSequential),
        (Preset::SymmetricSequential, Preset::FullCone),
    ] {
        let Connection { paths, .. } = connect(a, b, 2);
        assert_eq!(paths[0].1.ip().to_string(), "203.0.113.2", "{paths:?}");
    }
}
