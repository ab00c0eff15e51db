//! Two FogConnect nodes behind simulated NATs, a two-address STUN server and a signaling server,
//! under a stated WAN profile: the scenario behind the NAT matrix (`cargo run --release --example
//! matrix`) and its tests.
//!
//! # The WAN profile
//!
//! - each node's access link: 10 ms one way and 1 % loss each way, so the two peers are 20 ms
//!   apart one way (the topology is a tree: node, its NATs, the internet); no jitter, reordering
//!   or duplication unless a [`Profile`] asks for them (the matrix does not);
//! - the STUN server's link: 25 ms, so a node is 35 ms from it;
//! - the signaling channel: node A 30 ms, node B 40 ms one way (reliable and ordered, as TCP).
//!
//! A run: both nodes start, run discovery and authenticate; once both are ready (at most 30 s of
//! virtual time), A calls `connect(B)`. The time to a path is from that call to the instant the
//! second node reports `Connected`.

use std::collections::{BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use fog_signal::KeyPair;
use fog_signal::server::{RelayConfig, Server as SignalServer, ServerConfig as SignalConfig};
use fog_sim::link::LinkConfig;
use fog_sim::presets::{Preset, Site};
use fog_sim::signal::{Closed, Request, SignalLink, SignalNode};
use fog_sim::{NodeId, Sim};
use fog_stun::server::{Server as StunServer, ServerConfig as StunConfig};
use fog_turn::auth::AuthSecret;
use fog_turn::server::{Server as TurnServer, ServerConfig as TurnConfig};
use fogconnect::{
    AcceptPolicy, ConnectionId, Event, KnownNat, Node, NodeConfig, ServerChoice, SignalInput,
    SignalOutput,
};

pub(crate) const REALM: &str = "signal.example";
pub(crate) const TURN_SECRET: &[u8] = b"matrix relay secret";
pub(crate) const BASE_PORT: u16 = 5000;

/// The WAN profile's numbers (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    /// Each node's access link, one way.
    pub access: Duration,
    /// Loss on each access link, each way.
    pub loss: f64,
    /// Extra delay on each access link, each way, drawn uniformly from `0..=jitter` per
    /// datagram; on its own it never reorders ([`LinkConfig::jitter`]). Zero by default.
    pub jitter: Duration,
    /// Probability that a datagram on an access link leaves the FIFO order: it takes the
    /// latency plus a delay drawn from `0..=reorder_delay`, so datagrams sent within that
    /// delay after it may overtake it ([`LinkConfig::reorder`]). Zero by default.
    pub reorder: f64,
    /// The spread of the extra delay of a reordered datagram (see [`reorder`](Self::reorder)).
    pub reorder_delay: Duration,
    /// Probability that an access link delivers a datagram twice, each copy with its own delay
    /// ([`LinkConfig::duplicate`]). Zero by default.
    pub duplicate: f64,
    /// The STUN server's own link.
    pub stun_link: Duration,
    /// Signaling latency of node A and node B, one way.
    pub signal: [Duration; 2],
    /// How long to wait for the path after `connect`.
    pub patience: Duration,
    /// Each site's host also has an IPv6 address (2001:db8:N::2 for site N), which its NATs
    /// pass untranslated but filter as configured, and its node uses it as a further
    /// interface. Off by default.
    pub ipv6: bool,
    /// A second STUN and TURN server pair behind a link of this latency, which the nodes are
    /// configured with first, the usual pair being their alternative: they measure both and
    /// should pick the nearer. `None` by default.
    pub far_servers: Option<Duration>,
    /// What node B does with offers: [`AcceptPolicy::All`] by default, so that the matrix
    /// measures the network, not an application's decision; tests of accepting and refusing
    /// set [`AcceptPolicy::Ask`].
    pub accept: AcceptPolicy,
    /// The nodes' connect timeout ([`NodeConfig::connect_timeout`]; its default by default).
    pub connect_timeout: Option<Duration>,
    /// The nodes' idle timeout ([`NodeConfig::idle_timeout`]; its default by default).
    pub idle_timeout: Option<Duration>,
    /// The signaling server's per-connection frame rate and pending-offer limits lifted, for
    /// tests that make thousands of connections (off by default: fogd's limits).
    pub busy_signaling: bool,
    /// What node A and node B remember of their networks from an earlier run
    /// ([`NodeConfig::known_nats`]; none by default).
    pub known_nat: [Option<KnownNat>; 2],
}

impl Default for Profile {
    fn default() -> Self {
        Profile {
            access: Duration::from_millis(10),
            loss: 0.01,
            jitter: Duration::ZERO,
            reorder: 0.0,
            reorder_delay: Duration::ZERO,
            duplicate: 0.0,
            stun_link: Duration::from_millis(25),
            signal: [Duration::from_millis(30), Duration::from_millis(40)],
            patience: Duration::from_secs(10),
            ipv6: false,
            far_servers: None,
            accept: AcceptPolicy::All,
            connect_timeout: None,
            idle_timeout: None,
            busy_signaling: false,
            known_nat: [None, None],
        }
    }
}

impl Profile {
    /// The lower bound of the time to a direct path for two cone NATs: the offer and the answer
    /// each cross both signaling links (`2 · (sA + sB)`), then one peer round trip verifies the
    /// path (`2 · 2 · access`). 180 ms for the default profile.
    pub fn lower_bound(&self) -> Duration {
        2 * (self.signal[0] + self.signal[1]) + 4 * self.access
    }
}

/// A [`Node`] on the simulator's signaling channel: what the node asks with
/// [`Node::poll_signal`] becomes the channel's frames and requests.
#[derive(Debug)]
pub struct SimNode {
    /// The node.
    pub node: Node,
    base: SocketAddr,
    frames: VecDeque<String>,
    requests: VecDeque<Request>,
    /// The sockets a driver like fog-mio would hold for the node besides its base: every
    /// source address the node sent from or asked to bind, less those it asked to unbind.
    held: BTreeSet<SocketAddr>,
    /// When set, what an observer on the path or at the server would see of the node.
    pub log: Option<Observed>,
}

/// What a node sent: every datagram (destination, bytes) and every signaling frame.
#[derive(Debug, Default)]
pub struct Observed {
    /// The datagrams.
    pub datagrams: Vec<(SocketAddr, Vec<u8>)>,
    /// When each of [`datagrams`](Self::datagrams) left.
    pub sent_at: Vec<Instant>,
    /// The signaling frames.
    pub frames: Vec<String>,
    /// For each of [`frames`](Self::frames), how many of the datagrams had left before it
    /// (the drain order within one instant, which timestamps do not show).
    pub frames_after: Vec<usize>,
}

impl SimNode {
    /// Wraps `node`.
    pub fn new(node: Node, base: SocketAddr) -> Self {
        SimNode {
            node,
            base,
            frames: VecDeque::new(),
            requests: VecDeque::new(),
            held: BTreeSet::new(),
            log: None,
        }
    }

    /// How many sockets a real driver would hold open for the node besides its base socket
    /// (see the field's docs): what a test of released resources counts.
    pub fn held_sockets(&self) -> usize {
        self.held.len()
    }

    /// The sockets of [`held_sockets`](Self::held_sockets), for reports.
    pub fn held(&self) -> &BTreeSet<SocketAddr> {
        &self.held
    }

    /// Sorts what the node asks of its signaling connection into frames and requests.
    fn pull(&mut self) {
        while let Some(out) = self.node.poll_signal() {
            match out {
                SignalOutput::Frame(frame) => {
                    if let Some(log) = &mut self.log {
                        log.frames.push(frame.clone());
                        log.frames_after.push(log.datagrams.len());
                    }
                    self.frames.push_back(frame);
                }
                SignalOutput::Open => self.requests.push_back(Request::Connect),
                SignalOutput::Close => self.requests.push_back(Request::Close),
                _ => {}
            }
        }
    }
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
        let t = self.node.poll_transmit(now, buf)?;
        if let Some(source) = t.source.filter(|s| *s != self.base) {
            self.held.insert(source);
        }
        if let Some(log) = &mut self.log {
            log.datagrams.push((t.destination, buf[..t.len].to_vec()));
            log.sent_at.push(now);
        }
        Some(t)
    }
    fn poll_event(&mut self) -> Option<Event> {
        self.node.poll_event()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.node.poll_timeout()
    }
    fn poll_socket_request(&mut self) -> Option<fog_core::SocketRequest> {
        let request = self.node.poll_socket_request()?;
        match request {
            fog_core::SocketRequest::Bind(addr) => {
                self.held.insert(addr);
            }
            fog_core::SocketRequest::Unbind(addr) => {
                self.held.remove(&addr);
            }
        }
        Some(request)
    }
}

impl SignalNode for SimNode {
    fn handle_signal_open(&mut self, now: Instant) {
        self.node.handle_signal(now, SignalInput::Opened);
    }
    fn handle_signal_frame(&mut self, now: Instant, frame: &str) {
        self.node.handle_signal(now, SignalInput::Frame(frame));
    }
    fn handle_signal_closed(&mut self, now: Instant, _why: Closed) {
        self.frames.clear();
        self.node.handle_signal(now, SignalInput::Closed);
    }
    fn poll_signal_frame(&mut self) -> Option<String> {
        self.pull();
        self.frames.pop_front()
    }
    fn poll_signal_request(&mut self) -> Option<Request> {
        self.pull();
        self.requests.pop_front()
    }
}

/// How one run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    /// Both nodes knew enough of their NATs to connect ([`Event::Ready`]) and authenticated.
    pub ready: bool,
    /// From the start of the world to the later of the two nodes' [`Event::Ready`].
    pub time_to_ready: Option<Duration>,
    /// Both nodes reported a verified path, relayed or direct.
    pub connected: bool,
    /// Both nodes ended on a direct path.
    pub direct: bool,
    /// From `connect` to the later of the two nodes' first verified path (relayed or direct).
    pub time_to_path: Option<Duration>,
    /// From `connect` to the later of the two nodes' first direct path.
    pub time_to_direct: Option<Duration>,
    /// Each side's final path: (its socket, the peer's address).
    pub paths: Option<[(SocketAddr, SocketAddr); 2]>,
    /// What each node's discovery found, as text.
    pub discovered: [Option<String>; 2],
    /// Every event of node A and node B, with its virtual instant.
    pub events: [Vec<(Instant, Event)>; 2],
}

fn ready(events: &[(Instant, Event)]) -> bool {
    events.iter().any(|(_, e)| matches!(e, Event::Ready { .. }))
        && events.iter().any(|(_, e)| *e == Event::SignalingUp)
}

/// A node's path history: (when, local, remote, relayed) for `Connected` and each
/// `PathChanged`.
fn paths(events: &[(Instant, Event)]) -> Vec<(Instant, SocketAddr, SocketAddr, bool)> {
    events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::Connected {
                local, remote, via, ..
            }
            | Event::PathChanged {
                local, remote, via, ..
            } => Some((*t, *local, *remote, via.is_relayed())),
            _ => None,
        })
        .collect()
}

fn discovered(events: &[(Instant, Event)]) -> Option<String> {
    events.iter().find_map(|(_, e)| match e {
        Event::Ready { behaviour, .. } => Some(behaviour.to_string()),
        _ => None,
    })
}

/// The two-node world, to drive step by step (the matrix uses [`run`]).
pub struct Scenario {
    /// The simulator.
    pub sim: Sim,
    /// Node A's and node B's host and peer ID.
    pub hosts: [(NodeId, fog_signal::PeerId); 2],
    /// Every event of node A and node B so far, with its instant.
    pub events: [Vec<(Instant, Event)>; 2],
    /// Node A's and node B's sites (their middleboxes, for tests that change them).
    pub sites: [Site; 2],
    /// The signaling server's configuration, for tests that put another server in its place
    /// (one that tampers with frames, say) before the nodes start.
    pub signal_config: SignalConfig,
}

impl Scenario {
    /// Builds the world; nothing has run yet.
    pub fn new(a: Preset, b: Preset, seed: u64, profile: &Profile) -> Scenario {
        let (sim, hosts, sites, signal_config) = build(a, b, seed, profile);
        Scenario {
            sim,
            hosts,
            events: [Vec::new(), Vec::new()],
            sites,
            signal_config,
        }
    }

    /// Runs for `d`, collecting both nodes' events.
    pub fn run_for(&mut self, d: Duration) {
        self.sim.run_for(d);
        for (i, (host, _)) in self.hosts.iter().enumerate() {
            self.events[i].extend(self.sim.take_events::<Event>(*host));
        }
    }

    /// Runs until both nodes finished discovery and authenticated (at most 30 s); whether they
    /// did.
    pub fn wait_ready(&mut self) -> bool {
        for _ in 0..300 {
            if ready(&self.events[0]) && ready(&self.events[1]) {
                return true;
            }
            self.run_for(Duration::from_millis(100));
        }
        ready(&self.events[0]) && ready(&self.events[1])
    }

    /// Node A calls `connect(B)` for service 1; returns the instant and the handle.
    pub fn connect(&mut self) -> (Instant, ConnectionId) {
        let to = self.hosts[1].1;
        let id = self
            .sim
            .with_machine(self.hosts[0].0, |m: &mut SimNode, now| {
                m.node.connect(now, to, 1)
            })
            .expect("node A may connect");
        (self.sim.now(), id)
    }

    /// Runs `f` on node `i` (0: A, 1: B) at the simulator's current instant, and drains it.
    pub fn with_node<R>(&mut self, i: usize, f: impl FnOnce(&mut Node, Instant) -> R) -> R {
        self.sim
            .with_machine(self.hosts[i].0, |m: &mut SimNode, now| f(&mut m.node, now))
    }

    /// Node `i`'s path history: (when, local, remote, relayed) for `Connected` and each
    /// `PathChanged`.
    pub fn paths(&self, i: usize) -> Vec<(Instant, SocketAddr, SocketAddr, bool)> {
        paths(&self.events[i])
    }
}

/// One run of the scenario: node A behind `a`, node B behind `b`.
pub fn run(a: Preset, b: Preset, seed: u64, profile: &Profile) -> Run {
    let (mut sim, hosts, _, _) = build(a, b, seed, profile);
    let (ha, hb) = (hosts[0].0, hosts[1].0);
    let born = sim.now();
    let mut ea = Vec::new();
    let mut eb = Vec::new();
    for _ in 0..300 {
        sim.run_for(Duration::from_millis(100));
        ea.extend(sim.take_events::<Event>(ha));
        eb.extend(sim.take_events::<Event>(hb));
        if ready(&ea) && ready(&eb) {
            break;
        }
    }
    let discovered_both = [discovered(&ea), discovered(&eb)];
    let ready_at = |events: &[(Instant, Event)]| {
        events
            .iter()
            .find(|(_, e)| matches!(e, Event::Ready { .. }))
            .map(|(at, _)| *at)
    };
    let time_to_ready = ready_at(&ea)
        .zip(ready_at(&eb))
        .map(|(a, b)| a.max(b) - born);
    if !(ready(&ea) && ready(&eb)) {
        return Run {
            ready: false,
            time_to_ready,
            connected: false,
            direct: false,
            time_to_path: None,
            time_to_direct: None,
            paths: None,
            discovered: discovered_both,
            events: [ea, eb],
        };
    }
    let to = hosts[1].1;
    let start = sim.now();
    let connected = sim.with_machine(ha, |m: &mut SimNode, now| m.node.connect(now, to, 1));
    assert!(
        connected.is_ok(),
        "node A refused the connect: {connected:?}"
    );
    let step = Duration::from_millis(50);
    let mut waited = Duration::ZERO;
    let direct_now = |events: &[(Instant, Event)]| paths(events).last().is_some_and(|p| !p.3);
    while waited < profile.patience {
        sim.run_for(step);
        waited += step;
        ea.extend(sim.take_events::<Event>(ha));
        eb.extend(sim.take_events::<Event>(hb));
        if direct_now(&ea) && direct_now(&eb) {
            break;
        }
    }
    let (pa, pb) = (paths(&ea), paths(&eb));
    let first = |p: &[(Instant, SocketAddr, SocketAddr, bool)]| p.first().map(|x| x.0);
    let first_direct =
        |p: &[(Instant, SocketAddr, SocketAddr, bool)]| p.iter().find(|x| !x.3).map(|x| x.0);
    let later = |a: Option<Instant>, b: Option<Instant>| a.zip(b).map(|(a, b)| a.max(b) - start);
    let connected = !pa.is_empty() && !pb.is_empty();
    Run {
        ready: true,
        time_to_ready,
        connected,
        direct: direct_now(&ea) && direct_now(&eb),
        time_to_path: later(first(&pa), first(&pb)),
        time_to_direct: later(first_direct(&pa), first_direct(&pb)),
        paths: connected.then(|| {
            let (a, b) = (pa[pa.len() - 1], pb[pb.len() - 1]);
            [(a.1, a.2), (b.1, b.2)]
        }),
        discovered: discovered_both,
        events: [ea, eb],
    }
}

/// An RFC 5780 STUN server on 198.51.`net`.1 and .2, and a TURN server on .3 that shares its
/// secret with the signaling server handing out credentials (coturn's use-auth-secret
/// scheme), each behind a link of `latency`; returns their addresses.
pub(crate) fn add_servers(
    sim: &mut Sim,
    net: u8,
    latency: Duration,
    seed: [u8; 32],
) -> (SocketAddr, SocketAddr) {
    let ip = |last: u8| IpAddr::from([198, 51, net, last]);
    let (a1, a2) = (ip(1), ip(2));
    let link = LinkConfig::with_latency(latency);
    let stun = sim.add_host(
        &format!("stun{net}"),
        NodeId::INTERNET,
        &[a1, a2],
        link.clone(),
    );
    let primary = SocketAddr::new(a1, 3478);
    sim.set_machine(
        stun,
        3478,
        StunServer::new(StunConfig::new(primary).with_alternate(a2, 3479)),
    );
    let turn_addr = SocketAddr::new(ip(3), 3478);
    let turn_host = sim.add_host(&format!("turn{net}"), NodeId::INTERNET, &[ip(3)], link);
    let unix_epoch = (sim.now(), 1_800_000_000);
    sim.set_machine(
        turn_host,
        3478,
        TurnServer::new(TurnConfig::new(
            turn_addr,
            REALM,
            AuthSecret::new(TURN_SECRET.to_vec()),
            seed,
            unix_epoch,
        )),
    );
    (primary, turn_addr)
}

/// The world of the scenario: servers, both sites and their nodes.
fn build(
    a: Preset,
    b: Preset,
    seed: u64,
    profile: &Profile,
) -> (
    Sim,
    [(NodeId, fog_signal::PeerId); 2],
    [Site; 2],
    SignalConfig,
) {
    let mut sim = Sim::new(seed);
    let unix_epoch = (sim.now(), 1_800_000_000);
    let mut server_seed = [0u8; 32];
    server_seed[..8].copy_from_slice(&seed.to_le_bytes());
    let (primary, turn_addr) = add_servers(&mut sim, 100, profile.stun_link, server_seed);
    let far = profile
        .far_servers
        .map(|latency| add_servers(&mut sim, 101, latency, server_seed));
    let mut signal_config = SignalConfig::new(KeyPair::from_seed(&[200; 32]), REALM, server_seed);
    signal_config.relay = Some(RelayConfig {
        secret: TURN_SECRET.to_vec(),
        urls: vec![format!("turn:{turn_addr}")],
        ttl: Duration::from_secs(3600),
        epoch: unix_epoch,
    });
    if profile.busy_signaling {
        let limits = &mut signal_config.limits;
        limits.frames_per_second = 1_000_000;
        limits.burst = 1_000_000;
        limits.max_pending_offers = 10_000;
    }
    sim.set_signal_server(SignalServer::new(signal_config.clone()));
    // With the knobs at zero the links draw nothing for them from the simulator's RNG, so
    // a profile without them replays the same runs as before they existed.
    let access = LinkConfig {
        loss: profile.loss,
        jitter: profile.jitter,
        reorder: profile.reorder,
        reorder_delay: profile.reorder_delay,
        duplicate: profile.duplicate,
        ..LinkConfig::with_latency(profile.access)
    };
    let mut hosts = Vec::new();
    let mut sites = Vec::new();
    for (i, preset) in [a, b].into_iter().enumerate() {
        let n = i as u8 + 1;
        let v6 = IpAddr::V6(std::net::Ipv6Addr::new(
            0x2001,
            0xdb8,
            u16::from(n),
            0,
            0,
            0,
            0,
            2,
        ));
        let extra: &[IpAddr] = if profile.ipv6 { &[v6] } else { &[] };
        let name = if i == 0 { "a" } else { "b" };
        let site = preset.attach_with(&mut sim, name, n, access.clone(), extra);
        let mut key_seed = [n; 32];
        key_seed[..8].copy_from_slice(&seed.to_le_bytes());
        let key = KeyPair::from_seed(&key_seed);
        let peer = key.peer_id();
        let base = SocketAddr::new(site.host_addr, BASE_PORT);
        let mut config = NodeConfig::new(
            key,
            REALM,
            primary,
            base,
            seed.wrapping_mul(31) ^ u64::from(n),
        );
        config.turn = Some(turn_addr);
        config.interfaces = extra.to_vec();
        config.accept = profile.accept;
        config.known_nats = profile.known_nat[i].into_iter().collect();
        if let Some(t) = profile.connect_timeout {
            config.connect_timeout = t;
        }
        if let Some(t) = profile.idle_timeout {
            config.idle_timeout = t;
        }
        if let Some((far_stun, far_turn)) = far {
            config.stun = far_stun;
            config.turn = Some(far_turn);
            config.alternatives = vec![ServerChoice {
                stun: primary,
                turn: Some(turn_addr),
            }];
        }
        let node = Node::new(config, sim.now());
        sim.set_signal_machine(site.host, BASE_PORT, SimNode::new(node, base));
        sim.set_signal_link(site.host, SignalLink::with_latency(profile.signal[i]));
        hosts.push((site.host, peer));
        sites.push(site);
    }
    let [sa, sb] = <[Site; 2]>::try_from(sites).expect("two sites");
    (sim, [hosts[0], hosts[1]], [sa, sb], signal_config)
}
