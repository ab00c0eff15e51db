//! Chaos in the simulator: a seeded generator of worlds (2–6 nodes behind random NAT presets and
//! access links) and timelines (connect over a random transport, send, close, a route between
//! two sites down and up, a NAT reboot, idle spells), run against the real nodes in fog-sim and
//! checked step by step against a small reference model of what must be observable.
//!
//! The model ([`Model`]) is written from the API's promises and the presets' configured
//! behaviour, not from `fog_core::pairing`:
//!
//! - every connect ends, on the caller, in `Connected` or `Failed` (whose reason is typed)
//!   within the node's connect timeout plus the signaling and access delays of both ends;
//!   one made while no fault touched the pair ends `Connected` (a TURN relay, or the
//!   signaling relay for a site without UDP, is always there);
//! - each message arrives intact and only on its own connection (every payload names the
//!   connection, the direction and its sequence number); on KCP, QUIC and uTP in order, with
//!   nothing missing from what arrived before a later one; datagrams at most once;
//! - a stream closed by its sender delivers everything that was sent first;
//! - a connection is not closed by the library (idle, transport failure) while no NAT of
//!   either end was rebooted since it opened: a route between the two sites going down leaves
//!   the relay, which the path falls back to;
//! - a site without UDP only ever has paths through the signaling server; two sites whose
//!   NATs all map endpoint-independently (or one whose NATs neither translate per destination
//!   nor filter) end direct once the faults are over ([`must_be_direct`]);
//! - no timer is set in the past or fires over and over at one instant ([`Checked`]);
//! - after every connection is closed and the world settles, each node's
//!   [`Node::footprint`](fogconnect::Node::footprint) and held sockets are no more, field by
//!   field, than the node's own after its warm-up (fewer deadlines is not a leak: discovery may
//!   still have had one running then).

use std::cell::Cell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use fog_signal::KeyPair;
use fog_signal::server::{RelayConfig, Server as SignalServer, ServerConfig as SignalConfig};
use fog_sim::behaviour::{Filtering, Mapping};
use fog_sim::link::LinkConfig;
use fog_sim::presets::{Preset, Site};
use fog_sim::signal::{Closed, Request, SignalLink, SignalNode};
use fog_sim::{NodeId, Sim};
use fogconnect::{
    AcceptPolicy, CloseReason, ConnectionId, Event, Footprint, Node, NodeConfig, SendError,
    Transport, Via,
};

use crate::scenario::{BASE_PORT, REALM, SimNode, TURN_SECRET, add_servers};

/// SplitMix64: the generator's only source of randomness, so a seed is a scenario.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c909)
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    fn pick<T: Clone>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize].clone()
    }
}

/// One node of a world: its preset, access link and signaling latency.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// The NATs in front of it.
    pub preset: Preset,
    /// Its access link (between its outermost middlebox and the internet), both ways.
    pub link: LinkConfig,
    /// Its signaling channel's one-way latency.
    pub signal: Duration,
}

/// A connection's label in a plan: the `k`-th connect. Steps about a label whose connect was
/// shrunk away do nothing.
pub type Label = u16;

/// One operation of a timeline.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Node `from` connects to node `to` over `transport`; the connection is `label` (its
    /// service is `1000 + label`, which is how the answering side is matched).
    Connect {
        /// The connection.
        label: Label,
        /// The caller.
        from: usize,
        /// The callee.
        to: usize,
        /// The transport asked for.
        transport: Transport,
    },
    /// Side `side` (0: caller, 1: callee) of `label` sends `count` messages of up to `size`
    /// bytes.
    Send {
        /// The connection.
        label: Label,
        /// 0: the caller, 1: the callee.
        side: usize,
        /// How many.
        count: u16,
        /// The largest.
        size: u16,
    },
    /// Side `side` of `label` closes it.
    Close {
        /// The connection.
        label: Label,
        /// 0: the caller, 1: the callee.
        side: usize,
    },
    /// The route between the public addresses of nodes `a` and `b` fails (`down`) or comes
    /// back; both still reach the servers.
    Route {
        /// One node.
        a: usize,
        /// The other.
        b: usize,
        /// Down or up.
        down: bool,
    },
    /// Every NAT in front of `node` reboots and forgets its bindings.
    ResetNat {
        /// The node.
        node: usize,
    },
}

/// A step: wait `after`, then do `op` (if any: `None` is an idle spell).
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The wait before the operation.
    pub after: Duration,
    /// The operation.
    pub op: Option<Op>,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "+{:?} ", self.after)?;
        match &self.op {
            None => f.write_str("idle"),
            Some(Op::Connect {
                label,
                from,
                to,
                transport,
            }) => write!(
                f,
                "connect #{label} {from}->{to} {}",
                String::from(transport.clone())
            ),
            Some(Op::Send {
                label,
                side,
                count,
                size,
            }) => write!(f, "send #{label} side {side} {count} x <={size} B"),
            Some(Op::Close { label, side }) => write!(f, "close #{label} side {side}"),
            Some(Op::Route { a, b, down }) => {
                write!(f, "route {a}<->{b} {}", if *down { "down" } else { "up" })
            }
            Some(Op::ResetNat { node }) => write!(f, "reset NATs of {node}"),
        }
    }
}

/// A scenario: a world and its timeline, all from one seed.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The seed (of the plan, the simulator and the nodes).
    pub seed: u64,
    /// The nodes.
    pub nodes: Vec<NodeSpec>,
    /// The STUN and TURN servers' link latency.
    pub server_link: Duration,
    /// The timeline.
    pub steps: Vec<Step>,
    /// For the model's own tests: every payload sent names the next connection instead of its
    /// own, which the model must report (`data-crossed`). Off in generated plans.
    pub sabotage: bool,
}

const TRANSPORTS: [Transport; 5] = [
    Transport::Datagram,
    Transport::Kcp,
    Transport::Quic,
    Transport::Utp,
    Transport::Sctp,
];

/// The plan of `seed`: 2–6 nodes and 8–40 steps.
pub fn generate(seed: u64) -> Plan {
    let mut rng = Rng::new(seed);
    let n = 2 + rng.below(5) as usize;
    let nodes: Vec<NodeSpec> = (0..n)
        .map(|_| {
            let preset = rng.pick(&Preset::ALL);
            let latency = rng.millis(2, 60);
            let rough = rng.below(3) == 0;
            let link = LinkConfig {
                loss: rng.unit() * if rng.below(4) == 0 { 0.2 } else { 0.05 },
                jitter: if rough {
                    rng.millis(0, 10)
                } else {
                    Duration::ZERO
                },
                reorder: if rough { rng.unit() * 0.2 } else { 0.0 },
                reorder_delay: rng.millis(0, 10),
                duplicate: if rough { rng.unit() * 0.1 } else { 0.0 },
                ..LinkConfig::with_latency(latency)
            };
            NodeSpec {
                preset,
                link,
                signal: rng.millis(10, 80),
            }
        })
        .collect();
    let server_link = rng.millis(5, 50);
    let count = 8 + rng.below(33) as usize;
    let mut steps = Vec::with_capacity(count);
    let mut labels: Label = 0;
    let mut down: BTreeSet<(usize, usize)> = BTreeSet::new();
    for _ in 0..count {
        let after = if rng.below(8) == 0 {
            rng.millis(10_000, 50_000)
        } else {
            rng.millis(0, 3_000)
        };
        let roll = rng.below(100);
        let op = if roll < 30 || labels == 0 {
            let from = rng.below(n as u64) as usize;
            let to = (from + 1 + rng.below(n as u64 - 1) as usize) % n;
            labels += 1;
            Some(Op::Connect {
                label: labels - 1,
                from,
                to,
                transport: rng.pick(&TRANSPORTS),
            })
        } else if roll < 65 {
            Some(Op::Send {
                label: rng.below(u64::from(labels)) as Label,
                side: rng.below(2) as usize,
                count: 1 + rng.below(20) as u16,
                size: 16 + rng.below(1200) as u16,
            })
        } else if roll < 78 {
            Some(Op::Close {
                label: rng.below(u64::from(labels)) as Label,
                side: rng.below(2) as usize,
            })
        } else if roll < 90 {
            let a = rng.below(n as u64) as usize;
            let b = (a + 1 + rng.below(n as u64 - 1) as usize) % n;
            let key = (a.min(b), a.max(b));
            let is_down = !down.remove(&key);
            if is_down {
                down.insert(key);
            }
            Some(Op::Route {
                a: key.0,
                b: key.1,
                down: is_down,
            })
        } else if roll < 95 {
            Some(Op::ResetNat {
                node: rng.below(n as u64) as usize,
            })
        } else {
            None
        };
        steps.push(Step { after, op });
    }
    Plan {
        seed,
        nodes,
        server_link,
        steps,
        sabotage: false,
    }
}

/// Whether physics alone says two sites end on a direct path once the faults are over, from
/// the presets' configured NATs (not from `fog_core::pairing`):
///
/// - a side whose NATs neither map per destination nor filter (the open internet, a full
///   cone) answers whatever reaches it, at the address it came from: direct with any side that
///   has UDP;
/// - two sides whose NATs all map endpoint-independently (the port the peer learnt from STUN is
///   the one it will see) open each other's filters by sending at once: direct, unless a NAT
///   turns an early unsolicited datagram into state that remaps the host's flow
///   (`inbound_leaves_state`).
///
/// Anything else (a per-destination mapping against a filtering side) has no expectation here:
/// whether prediction or many sockets find the port is the strategy's business.
pub fn must_be_direct(a: Preset, b: Preset) -> bool {
    if a == Preset::UdpBlocked || b == Preset::UdpBlocked {
        return false;
    }
    let open = |p: Preset| {
        p.nats().iter().all(|n| {
            n.mapping == Mapping::EndpointIndependent
                && n.filtering == Filtering::EndpointIndependent
        })
    };
    let eim = |p: Preset| {
        p.nats()
            .iter()
            .all(|n| n.mapping == Mapping::EndpointIndependent && !n.inbound_leaves_state)
    };
    open(a) || open(b) || (eim(a) && eim(b))
}

/// How many timeouts at one instant count as a spinning timer.
const SPIN_LIMIT: u32 = 1_000;

/// A [`SimNode`] whose timer is watched: a deadline before the instant it was read at, or more
/// than `SPIN_LIMIT` timeouts at one instant, is recorded (and a spin is broken, so that the
/// run ends).
#[derive(Debug)]
pub struct Checked {
    /// The node.
    pub inner: SimNode,
    now: Cell<Option<Instant>>,
    same_instant: u32,
    /// What went wrong with the timer, with when.
    pub faults: std::cell::RefCell<Vec<String>>,
}

impl Checked {
    fn seen(&self, now: Instant) {
        if self.now.get().is_none_or(|t| now > t) {
            self.now.set(Some(now));
        }
    }
}

impl SansIo for Checked {
    type Event = Event;
    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        self.seen(now);
        self.inner.handle_packet(now, packet);
    }
    fn handle_timeout(&mut self, now: Instant) {
        if self.now.get() == Some(now) {
            self.same_instant += 1;
        } else {
            self.same_instant = 0;
        }
        self.seen(now);
        self.inner.handle_timeout(now);
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.seen(now);
        self.inner.poll_transmit(now, buf)
    }
    fn poll_event(&mut self) -> Option<Event> {
        self.inner.poll_event()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        let t = self.inner.poll_timeout()?;
        let now = self.now.get()?;
        if t < now {
            self.faults
                .borrow_mut()
                .push(format!("timer set {:?} in the past", now - t));
        }
        if t <= now && self.same_instant >= SPIN_LIMIT {
            self.faults.borrow_mut().push(format!(
                "timer spinning: {SPIN_LIMIT} timeouts at one instant"
            ));
            return None;
        }
        Some(t)
    }
    fn poll_socket_request(&mut self) -> Option<fog_core::SocketRequest> {
        self.inner.poll_socket_request()
    }
}

impl SignalNode for Checked {
    fn handle_signal_open(&mut self, now: Instant) {
        self.seen(now);
        self.inner.handle_signal_open(now);
    }
    fn handle_signal_frame(&mut self, now: Instant, frame: &str) {
        self.seen(now);
        self.inner.handle_signal_frame(now, frame);
    }
    fn handle_signal_closed(&mut self, now: Instant, why: Closed) {
        self.seen(now);
        self.inner.handle_signal_closed(now, why);
    }
    fn poll_signal_frame(&mut self) -> Option<String> {
        self.inner.poll_signal_frame()
    }
    fn poll_signal_request(&mut self) -> Option<Request> {
        self.inner.poll_signal_request()
    }
}

/// A built world.
pub struct World {
    /// The simulator.
    pub sim: Sim,
    /// Each node's host and peer ID.
    pub hosts: Vec<(NodeId, fog_signal::PeerId)>,
    /// Each node's site.
    pub sites: Vec<Site>,
}

/// The public address a site shows the internet (the route a [`Op::Route`] cuts).
fn public_ip(site_index: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(203, 0, 113, site_index as u8 + 1))
}

/// Builds `plan`'s world: the servers, each node's site and node; nothing has run yet.
pub fn build(plan: &Plan) -> World {
    let mut sim = Sim::new(plan.seed);
    if std::env::var_os("FOG_CHAOS_SIMTRACE").is_some() {
        sim.enable_trace();
    }
    let unix_epoch = (sim.now(), 1_800_000_000);
    let mut server_seed = [0u8; 32];
    server_seed[..8].copy_from_slice(&plan.seed.to_le_bytes());
    let (stun, turn) = add_servers(&mut sim, 100, plan.server_link, server_seed);
    let mut signal_config = SignalConfig::new(KeyPair::from_seed(&[200; 32]), REALM, server_seed);
    signal_config.relay = Some(RelayConfig {
        secret: TURN_SECRET.to_vec(),
        urls: vec![format!("turn:{turn}")],
        ttl: Duration::from_secs(3600),
        epoch: unix_epoch,
    });
    sim.set_signal_server(SignalServer::new(signal_config));
    let mut hosts = Vec::new();
    let mut sites = Vec::new();
    for (i, spec) in plan.nodes.iter().enumerate() {
        let n = i as u8 + 1;
        let site = spec
            .preset
            .attach(&mut sim, &format!("n{i}"), n, spec.link.clone());
        let mut key_seed = [n; 32];
        key_seed[..8].copy_from_slice(&plan.seed.to_le_bytes());
        let key = KeyPair::from_seed(&key_seed);
        let peer = key.peer_id();
        let base = SocketAddr::new(site.host_addr, BASE_PORT);
        let mut config = NodeConfig::new(
            key,
            REALM,
            stun,
            base,
            plan.seed.wrapping_mul(31) ^ u64::from(n),
        );
        config.turn = Some(turn);
        config.accept = AcceptPolicy::All;
        let node = Node::new(config, sim.now());
        let checked = Checked {
            inner: SimNode::new(node, base),
            now: Cell::new(None),
            same_instant: 0,
            faults: std::cell::RefCell::new(Vec::new()),
        };
        sim.set_signal_machine(site.host, BASE_PORT, checked);
        sim.set_signal_link(site.host, SignalLink::with_latency(spec.signal));
        hosts.push((site.host, peer));
        sites.push(site);
    }
    World { sim, hosts, sites }
}

/// A payload: label (2), side (1), sequence (4), length (2), then a pattern of all four.
fn message(label: Label, side: usize, seq: u32, len: usize) -> Vec<u8> {
    let len = len.max(9);
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&label.to_be_bytes());
    m.push(side as u8);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&(len as u16).to_be_bytes());
    m.extend(
        (9..len).map(|i| (i as u32 ^ seq.wrapping_mul(2_654_435_761) ^ u32::from(label)) as u8),
    );
    m
}

/// The header of a payload, if it is whole and its pattern right: (label, side, seq).
fn parse(m: &[u8]) -> Option<(Label, usize, u32)> {
    if m.len() < 9 {
        return None;
    }
    let label = u16::from_be_bytes([m[0], m[1]]);
    let side = usize::from(m[2]);
    let seq = u32::from_be_bytes([m[3], m[4], m[5], m[6]]);
    let len = usize::from(u16::from_be_bytes([m[7], m[8]]));
    (len == m.len() && message(label, side, seq, len) == m).then_some((label, side, seq))
}

/// One connection as the model sees it.
#[derive(Debug, Default)]
struct Conn {
    ends: [usize; 2],
    transport: Option<Transport>,
    connected_at: Option<Instant>,
    /// Each side's handle, once known.
    ids: [Option<ConnectionId>; 2],
    /// Each side ended (closed or failed), and how.
    ended: [Option<String>; 2],
    /// Each side closed it itself.
    closed_by_us: [bool; 2],
    /// What each side sent successfully: (seq, len).
    sent: [Vec<(u32, usize)>; 2],
    next_seq: [u32; 2],
    /// What each side received: seqs of the peer's messages, in arrival order.
    got: [Vec<u32>; 2],
    /// A uTP side's received bytes not yet parsed into messages.
    partial: [Vec<u8>; 2],
    /// When the connect was made.
    started: Option<Instant>,
    /// A NAT of either end rebooted, or a route between them was down, during its life.
    faulted: bool,
    nat_reset: bool,
    /// Every path each side reported: whether relayed, and how.
    last_via: [Option<Via>; 2],
}

/// A breach of the model: the step after which it was seen, and what.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// The index of the step (the timeline's length for the final checks).
    pub step: usize,
    /// What kind (stable, for shrinking and tables).
    pub kind: &'static str,
    /// The details.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "step {}: {}: {}", self.step, self.kind, self.detail)
    }
}

/// How a run ended.
#[derive(Debug, Default)]
pub struct Outcome {
    /// What broke the model.
    pub violations: Vec<Violation>,
    /// Connects made, and how many ended connected.
    pub connects: usize,
    /// Connects that reached `Connected` on the caller.
    pub connected: usize,
    /// Messages sent and received.
    pub messages: (usize, usize),
    /// Virtual time simulated.
    pub virtual_time: Duration,
}

/// The reference model and the driver: runs `plan` and checks it.
pub struct Model {
    world: World,
    plan: Plan,
    conns: BTreeMap<Label, Conn>,
    /// Each node's handle → label.
    by_id: Vec<BTreeMap<ConnectionId, Label>>,
    down: BTreeSet<(usize, usize)>,
    out: Outcome,
    step: usize,
    fresh: Vec<(Footprint, usize)>,
    /// The timer faults reported so far: (node, in the past rather than spinning).
    timer_reported: BTreeSet<(usize, bool)>,
    /// Print every event and step (`FOG_CHAOS_TRACE` set).
    trace: bool,
}

impl Model {
    fn node<R>(&mut self, i: usize, f: impl FnOnce(&mut Node, Instant) -> R) -> R {
        self.world
            .sim
            .with_machine(self.world.hosts[i].0, |m: &mut Checked, now| {
                f(&mut m.inner.node, now)
            })
    }

    fn violate(&mut self, kind: &'static str, detail: String) {
        self.out.violations.push(Violation {
            step: self.step,
            kind,
            detail,
        });
    }

    /// The connect bound of `c`: the node's connect timeout, plus the offer and answer
    /// crossing both signaling channels, plus a round trip over both access links, plus the
    /// granularity at which the model looks (100 ms).
    fn connect_bound(&self, c: &Conn) -> Duration {
        let [a, b] = c.ends.map(|i| &self.plan.nodes[i]);
        Duration::from_secs(30)
            + 2 * (a.signal + b.signal)
            + 2 * (a.link.latency + b.link.latency + a.link.jitter + b.link.jitter)
            + Duration::from_millis(100)
    }

    /// Runs for `d` in slices of 100 ms, taking the events after each.
    fn run_for(&mut self, d: Duration) {
        let slice = Duration::from_millis(100);
        let mut left = d;
        while !left.is_zero() {
            let now = slice.min(left);
            self.world.sim.run_for(now);
            left -= now;
            self.absorb();
        }
        self.absorb();
    }

    fn absorb(&mut self) {
        for i in 0..self.world.hosts.len() {
            let host = self.world.hosts[i].0;
            for (at, e) in self.world.sim.take_events::<Event>(host) {
                self.event(i, at, e);
            }
            let faults: Vec<String> = self
                .world
                .sim
                .machine::<Checked>(host)
                .faults
                .borrow_mut()
                .drain(..)
                .collect();
            // Once per node and kind: a stale deadline is read at every drain until it fires.
            for f in faults {
                let past = f.starts_with("timer set");
                if self.timer_reported.insert((i, past)) {
                    self.violate("timer", format!("node {i}: {f}"));
                }
            }
        }
        let now = self.world.sim.now();
        let late: Vec<(Label, Duration)> = self
            .conns
            .iter()
            .filter(|(_, c)| c.ended[0].is_none() && c.connected_at.is_none())
            .filter_map(|(l, c)| {
                let bound = self.connect_bound(c);
                (now - c.started? > bound).then_some((*l, bound))
            })
            .collect();
        for (l, bound) in late {
            self.violate(
                "connect-unresolved",
                format!("#{l}: neither Connected nor Failed within {bound:?}"),
            );
            // Reported once.
            self.conns.get_mut(&l).expect("known").ended[0] = Some("unresolved".into());
        }
    }

    fn side_of(&self, i: usize, id: ConnectionId) -> Option<(Label, usize)> {
        let l = *self.by_id[i].get(&id)?;
        let c = &self.conns[&l];
        let side = if c.ends[0] == i && c.ids[0] == Some(id) {
            0
        } else {
            1
        };
        Some((l, side))
    }

    fn event(&mut self, i: usize, at: Instant, e: Event) {
        if self.trace {
            let at = self.world.sim.time_of(at);
            match &e {
                // A payload's header, not its bytes (a uTP chunk may hold several or part).
                Event::Data { id, data } => eprintln!(
                    "{at:?} node {i}: Data {{ id: {id}, {} bytes, {:?} }}",
                    data.len(),
                    parse(data)
                ),
                _ => eprintln!("{at:?} node {i}: {e:?}"),
            }
        }
        match e {
            Event::Incoming {
                id, peer, service, ..
            } => {
                let Some(label) = service.checked_sub(1000) else {
                    return self.violate("stray-incoming", format!("node {i}: service {service}"));
                };
                let caller = self.world.hosts.iter().position(|h| h.1 == peer);
                match self.conns.get_mut(&label) {
                    Some(c)
                        if c.ends[1] == i && Some(c.ends[0]) == caller && c.ids[1].is_none() =>
                    {
                        c.ids[1] = Some(id);
                        self.by_id[i].insert(id, label);
                    }
                    _ => self.violate(
                        "stray-incoming",
                        format!("node {i}: {id} for #{label} from {caller:?}"),
                    ),
                }
            }
            Event::Connected { id, via, .. } | Event::PathChanged { id, via, .. } => {
                let Some((l, side)) = self.side_of(i, id) else {
                    return self.violate("unknown-handle", format!("node {i}: path on {id}"));
                };
                let blocked = self.conns[&l]
                    .ends
                    .iter()
                    .any(|&n| self.plan.nodes[n].preset == Preset::UdpBlocked);
                if blocked && via != Via::Signaling {
                    self.violate(
                        "path-without-udp",
                        format!("node {i} #{l}: {via:?} though a side has no UDP"),
                    );
                }
                let c = self.conns.get_mut(&l).expect("known");
                c.last_via[side] = Some(via);
                if side == 0 && c.connected_at.is_none() {
                    c.connected_at = Some(at);
                    self.out.connected += 1;
                }
            }
            Event::Data { id, data } => {
                let Some((l, side)) = self.side_of(i, id) else {
                    return self.violate("unknown-handle", format!("node {i}: data on {id}"));
                };
                self.data(l, side, &data);
            }
            Event::Failed { id, reason } => {
                let Some((l, side)) = self.side_of(i, id) else {
                    return self.violate("unknown-handle", format!("node {i}: failed {id}"));
                };
                let c = self.conns.get_mut(&l).expect("known");
                let ours = c.closed_by_us;
                let (faulted, started) = (c.faulted, c.started);
                if c.ended[side].is_none() {
                    c.ended[side] = Some(format!("failed: {reason}"));
                }
                // A connect no fault touched, with a relay always there, must connect; the
                // callee may fail when the caller gave up first.
                if !faulted && !ours[0] && !ours[1] && side == 0 {
                    self.violate(
                        "connect-failed",
                        format!(
                            "#{l} failed after {:?} with no fault: {reason}",
                            started.map(|s| at - s)
                        ),
                    );
                }
            }
            Event::Closed {
                id,
                reason,
                by_peer,
            } => {
                let Some((l, side)) = self.side_of(i, id) else {
                    return self.violate("unknown-handle", format!("node {i}: closed {id}"));
                };
                let c = self.conns.get_mut(&l).expect("known");
                if c.ended[side].is_none() {
                    c.ended[side] = Some(format!("closed: {reason} (by peer: {by_peer})"));
                }
                let app = matches!(reason, CloseReason::Application { .. });
                if !app && !c.nat_reset {
                    let detail = format!(
                        "node {i} #{l} side {side} ({:?}, sent {:?}): {reason} with no NAT reboot",
                        c.transport,
                        c.sent.each_ref().map(Vec::len)
                    );
                    self.violate("closed-without-cause", detail);
                    return;
                }
                // A stream closed by its sender delivers what was sent first.
                let c = &self.conns[&l];
                let reliable = c
                    .transport
                    .as_ref()
                    .is_some_and(|t| *t != Transport::Datagram);
                if reliable && app && by_peer && c.closed_by_us[1 - side] {
                    let (sent, got) = (c.sent[1 - side].len(), c.got[side].len());
                    if got < sent {
                        let bytes: usize = c.sent[1 - side].iter().map(|&(_, n)| n).sum();
                        let partial = c.partial[side].len();
                        self.violate(
                            "close-lost-data",
                            format!(
                                "#{l} side {side}: {got} of {sent} messages ({bytes} bytes, \
                                 {partial} of a message cut short) before the peer's close"
                            ),
                        );
                    }
                }
            }
            _ => {}
        }
    }

    fn data(&mut self, l: Label, side: usize, data: &[u8]) {
        let c = self.conns.get_mut(&l).expect("known");
        let chunks: Vec<Vec<u8>> = if c.transport == Some(Transport::Utp) {
            // A byte stream: cut it into messages by their length field.
            c.partial[side].extend_from_slice(data);
            let mut out = Vec::new();
            loop {
                let p = &c.partial[side];
                if p.len() < 9 {
                    break;
                }
                let len = usize::from(u16::from_be_bytes([p[7], p[8]]));
                if len < 9 || p.len() < len {
                    if len < 9 {
                        out.push(std::mem::take(&mut c.partial[side]));
                    }
                    break;
                }
                out.push(c.partial[side].drain(..len).collect());
            }
            out
        } else {
            vec![data.to_vec()]
        };
        for m in chunks {
            self.out.messages.1 += 1;
            let c = self.conns.get_mut(&l).expect("known");
            match parse(&m) {
                Some((label, from, seq)) if label == l && from == 1 - side => {
                    let reliable = c.transport != Some(Transport::Datagram);
                    let known = c.sent[from].iter().any(|&(s, _)| s == seq);
                    let dup = c.got[side].contains(&seq);
                    let in_order = c.got[side].last().is_none_or(|&p| seq == p + 1)
                        && (!c.got[side].is_empty() || seq == 0);
                    c.got[side].push(seq);
                    if !known {
                        self.violate("data-unsent", format!("#{l} side {side}: seq {seq}"));
                    } else if dup {
                        self.violate("data-duplicate", format!("#{l} side {side}: seq {seq}"));
                    } else if reliable && !in_order {
                        let prev = self.conns[&l].got[side].len();
                        self.violate(
                            "data-order",
                            format!("#{l} side {side}: seq {seq} as message {}", prev - 1),
                        );
                    }
                }
                Some((label, from, seq)) => self.violate(
                    "data-crossed",
                    format!("#{l} side {side}: got #{label} side {from} seq {seq}"),
                ),
                None => self.violate(
                    "data-corrupt",
                    format!("#{l} side {side}: {} bytes", m.len()),
                ),
            }
        }
    }

    fn op(&mut self, op: Op) {
        match op {
            Op::Connect {
                label,
                from,
                to,
                transport,
            } => {
                let peer = self.world.hosts[to].1;
                let t = transport.clone();
                let r = self.node(from, |n, now| n.connect_with(now, peer, 1000 + label, t));
                self.out.connects += 1;
                match r {
                    Ok(id) => {
                        let now = self.world.sim.now();
                        self.by_id[from].insert(id, label);
                        self.conns.insert(
                            label,
                            Conn {
                                ends: [from, to],
                                transport: Some(transport),
                                ids: [Some(id), None],
                                started: Some(now),
                                ..Conn::default()
                            },
                        );
                    }
                    Err(e) => self.violate("connect-refused", format!("#{label}: {e}")),
                }
            }
            Op::Send {
                label,
                side,
                count,
                size,
            } => {
                let Some(c) = self.conns.get(&label) else {
                    return;
                };
                let (Some(id), node) = (c.ids[side], c.ends[side]) else {
                    return;
                };
                let datagram = c.transport == Some(Transport::Datagram);
                for k in 0..count {
                    let c = &self.conns[&label];
                    let seq = c.next_seq[side];
                    let len = if datagram {
                        usize::from(size).min(fogconnect::MAX_DATAGRAM)
                    } else {
                        usize::from(size) * (1 + usize::from(k % 4))
                    };
                    let named = if self.plan.sabotage { label + 1 } else { label };
                    let m = message(named, side, seq, len);
                    let r = self.node(node, |n, now| n.send(now, id, &m));
                    match r {
                        Ok(()) => {
                            let c = self.conns.get_mut(&label).expect("known");
                            c.sent[side].push((seq, m.len()));
                            c.next_seq[side] += 1;
                            self.out.messages.0 += 1;
                        }
                        Err(SendError::Blocked) | Err(SendError::NotConnected) => break,
                        Err(SendError::UnknownConnection) => {
                            if self.conns[&label].ended[side].is_none() {
                                self.violate(
                                    "handle-lost",
                                    format!("#{label} side {side}: unknown before any end event"),
                                );
                            }
                            break;
                        }
                        Err(e) => {
                            self.violate("send", format!("#{label} side {side}: {e}"));
                            break;
                        }
                    }
                }
            }
            Op::Close { label, side } => {
                let Some(c) = self.conns.get(&label) else {
                    return;
                };
                let (Some(id), node) = (c.ids[side], c.ends[side]) else {
                    return;
                };
                let ended = c.ended[side].is_some();
                let r = self.node(node, |n, now| n.close(now, id, 7, "chaos"));
                let c = self.conns.get_mut(&label).expect("known");
                if r.is_ok() {
                    c.closed_by_us[side] = true;
                } else if !ended {
                    // Perhaps an end event not yet taken: take them and look again.
                    self.absorb();
                    if self.conns[&label].ended[side].is_none() {
                        self.violate(
                            "handle-lost",
                            format!("#{label} side {side}: close said unknown before any end"),
                        );
                    }
                }
            }
            Op::Route { a, b, down } => {
                let (x, y) = (public_ip(a), public_ip(b));
                self.world.sim.set_blackhole(x, y, down);
                if down {
                    self.down.insert((a, b));
                } else {
                    self.down.remove(&(a, b));
                }
            }
            Op::ResetNat { node } => {
                let nats: Vec<NodeId> = match self.plan.nodes[node].preset {
                    Preset::UdpBlocked | Preset::OpenInternet => vec![],
                    _ => self.world.sites[node].middleboxes.clone(),
                };
                for nat in nats {
                    self.world.sim.reset_nat(nat);
                }
                for c in self.conns.values_mut() {
                    if c.ends.contains(&node) {
                        c.nat_reset = true;
                        c.faulted = true;
                    }
                }
            }
        }
        self.mark_faults();
    }

    /// Connections whose ends' route is down are faulted.
    fn mark_faults(&mut self) {
        for c in self.conns.values_mut() {
            let key = (c.ends[0].min(c.ends[1]), c.ends[0].max(c.ends[1]));
            if self.down.contains(&key) {
                c.faulted = true;
            }
        }
    }
}

/// How long the nodes get to finish discovery before the timeline (the filtering tests'
/// silence ends at 4.75 s; the slowest signaling channel adds its round trips).
const WARM_UP: Duration = Duration::from_secs(8);
/// After the timeline, with every route back: time for punching to be retried and succeed
/// (a round every 30 s or so, see `examples/tests/fallback.rs`) and for streams to deliver.
const QUIET: Duration = Duration::from_secs(65);
/// After closing everything: the peer's close, lingering streams and the relay's permissions.
const SETTLE: Duration = Duration::from_secs(90);

/// Runs `plan` and checks it against the model.
pub fn run(plan: &Plan) -> Outcome {
    let world = build(plan);
    let n = plan.nodes.len();
    let mut m = Model {
        world,
        plan: plan.clone(),
        conns: BTreeMap::new(),
        by_id: vec![BTreeMap::new(); n],
        down: BTreeSet::new(),
        out: Outcome::default(),
        step: 0,
        fresh: Vec::new(),
        timer_reported: BTreeSet::new(),
        trace: std::env::var_os("FOG_CHAOS_TRACE").is_some(),
    };
    m.run_for(WARM_UP);
    for i in 0..n {
        let f = m.node(i, |n, _| n.footprint());
        let held = m
            .world
            .sim
            .machine::<Checked>(m.world.hosts[i].0)
            .inner
            .held_sockets();
        m.fresh.push((f, held));
    }
    for (k, step) in plan.steps.iter().enumerate() {
        m.step = k;
        m.run_for(step.after);
        if m.trace {
            eprintln!("{:?} step {k}: {step}", m.world.sim.elapsed());
        }
        if let Some(op) = step.op.clone() {
            m.op(op);
        }
        m.absorb();
    }
    m.step = plan.steps.len();
    // Every route back, then quiet.
    for (a, b) in std::mem::take(&mut m.down) {
        m.world.sim.set_blackhole(public_ip(a), public_ip(b), false);
    }
    m.run_for(QUIET);
    m.final_checks();
    // Close everything still open, from the caller's side, and let it settle.
    let open: Vec<(usize, ConnectionId)> = m
        .conns
        .values()
        .flat_map(|c| (0..2).filter_map(move |s| Some((c.ends[s], c.ids[s]?))))
        .collect();
    for (node, id) in open {
        let _ = m.node(node, |n, now| n.close(now, id, 7, "the end"));
    }
    m.run_for(SETTLE);
    for i in 0..n {
        let f = m.node(i, |n, _| n.footprint());
        let sockets = m
            .world
            .sim
            .machine::<Checked>(m.world.hosts[i].0)
            .inner
            .held()
            .clone();
        let held = sockets.len();
        let (was, held_was) = m.fresh[i];
        let kept = f.connections > was.connections
            || f.deadlines > was.deadlines
            || f.sockets > was.sockets
            || f.relay_permissions > was.relay_permissions
            || f.requests > was.requests
            || f.queued > was.queued
            || f.signal_frames > was.signal_frames
            || held > held_was;
        if kept {
            let fresh = m.fresh[i];
            m.violate(
                "resources-kept",
                format!(
                    "node {i}: {f:?}, sockets {sockets:?}; fresh {:?}, {} sockets",
                    fresh.0, fresh.1
                ),
            );
        }
    }
    m.out.virtual_time = m.world.sim.elapsed();
    // Every packet's hop, for a failing seed's diagnosis: FOG_CHAOS_SIMTRACE=FILE.
    if let Some(path) = std::env::var_os("FOG_CHAOS_SIMTRACE") {
        let _ = std::fs::write(path, m.world.sim.trace());
    }
    m.out
}

impl Model {
    /// After the quiet period: streams open on both sides delivered everything, and pairs that
    /// physics says must be direct are.
    fn final_checks(&mut self) {
        let mut found = Vec::new();
        for (l, c) in &self.conns {
            let open = c.ended == [None, None] && c.connected_at.is_some() && c.ids[1].is_some();
            if !open {
                continue;
            }
            let reliable = c.transport != Some(Transport::Datagram);
            for side in 0..2 {
                let (sent, got) = (c.sent[1 - side].len(), c.got[side].len());
                if reliable && got != sent {
                    found.push((
                        "stream-incomplete",
                        format!(
                            "#{l} side {side}: {got} of {sent} messages after the quiet period"
                        ),
                    ));
                }
            }
            let [a, b] = c.ends.map(|i| self.plan.nodes[i].preset);
            if must_be_direct(a, b) && c.last_via.iter().any(|v| *v != Some(Via::Direct)) {
                found.push((
                    "not-direct",
                    format!(
                        "#{l} {a}/{b}: paths {:?} after the quiet period",
                        c.last_via
                    ),
                ));
            }
        }
        for (kind, detail) in found {
            self.violate(kind, detail);
        }
    }
}

/// The smallest timeline (by removing steps one at a time, at most `budget` runs) of `plan`
/// that still breaks the model with a violation of `kind`.
pub fn shrink(plan: &Plan, kind: &str, budget: usize) -> Plan {
    let mut best = plan.clone();
    let mut runs = 0;
    let mut i = 0;
    while i < best.steps.len() && runs < budget {
        let mut trial = best.clone();
        trial.steps.remove(i);
        runs += 1;
        let out = std::panic::catch_unwind(|| run(&trial));
        let still = match out {
            Ok(o) => o.violations.iter().any(|v| v.kind == kind),
            Err(_) => kind == "panic",
        };
        if still {
            best = trial;
        } else {
            i += 1;
        }
    }
    best
}

/// `plan` as text: the world, then the steps.
pub fn describe(plan: &Plan) -> String {
    let mut s = format!("seed {}\n", plan.seed);
    for (i, n) in plan.nodes.iter().enumerate() {
        s += &format!(
            "  node {i}: {} link {:?} loss {:.3} jitter {:?} reorder {:.2} dup {:.2} signal {:?}\n",
            n.preset,
            n.link.latency,
            n.link.loss,
            n.link.jitter,
            n.link.reorder,
            n.link.duplicate,
            n.signal
        );
    }
    for (k, step) in plan.steps.iter().enumerate() {
        s += &format!("  {k}: {step}\n");
    }
    s
}
