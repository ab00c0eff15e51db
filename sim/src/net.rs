//! The simulator: virtual clock, event queue, topology, routing and the hosts' machines.

use std::any::Any;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt::{self, Debug};
use std::io::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, SocketRequest, Transmit};
use rand::{RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;
use rustc_hash::FxHashMap;

use crate::link::{IPV4_UDP_OVERHEAD, IPV6_UDP_OVERHEAD, LinkConfig, LinkDrop, LinkState, nanos};
use crate::nat::{NatConfig, NatDrop, NatTable};
use crate::pcap::PcapWriter;
use crate::signal::SignalNode;

mod channel;

/// The TTL hosts give a datagram unless its [`Transmit`] asks otherwise (Linux's default).
pub const DEFAULT_TTL: u8 = 64;
/// Size of the buffer machines write transmits into.
const TRANSMIT_BUF_LEN: usize = 65_535;

/// A node of the topology: the internet, a host, or a middlebox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u32);

impl NodeId {
    /// The open internet: the root every topology hangs from. It routes by destination address
    /// among the nodes attached to it.
    pub const INTERNET: NodeId = NodeId(0);
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// Why the simulator dropped a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Drop {
    /// A link lost it.
    Link(LinkDrop),
    /// A NAT or firewall refused it.
    Nat(NatDrop),
    /// Its TTL ran out at a forwarding node.
    TtlExpired,
    /// No node owns the destination address.
    NoRoute,
    /// A UDP-blocking middlebox was on the path.
    UdpBlocked,
    /// It reached its host, whose machine did not [accept](SansIo::accepts) it.
    NotAccepted,
    /// A machine named a source address its host does not have.
    BadSource,
    /// A machine sent to an address family its host has no address in.
    NoAddressForFamily,
    /// The internet drops everything between these two addresses ([`Sim::set_blackhole`]).
    Blackholed,
}

/// Counters of what happened to datagrams.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams machines handed to the network.
    pub sent: u64,
    /// Datagrams handed to a machine.
    pub delivered: u64,
    /// Extra copies links made by duplication.
    pub duplicated: u64,
    /// Drops by reason.
    pub drops: BTreeMap<Drop, u64>,
}

impl Stats {
    /// How many datagrams were dropped for `reason`.
    pub fn dropped(&self, reason: Drop) -> u64 {
        self.drops.get(&reason).copied().unwrap_or(0)
    }

    /// All drops, whatever the reason.
    pub fn dropped_total(&self) -> u64 {
        self.drops.values().sum()
    }

    /// Datagrams still travelling: every datagram sent (and every duplicate) is eventually either
    /// delivered or dropped, so this is zero once the network is quiet.
    pub fn in_flight(&self) -> u64 {
        (self.sent + self.duplicated).saturating_sub(self.delivered + self.dropped_total())
    }
}

/// What a packet capture records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaptureTarget {
    /// Everything a host sends and everything delivered to it.
    Host(NodeId),
    /// Everything put onto a node's uplink, in both directions (before loss: as seen by the sender).
    Link(NodeId),
}

/// A handle to a capture started with [`Sim::capture`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaptureId(usize);

/// A machine as the simulator holds it: its event type erased so that machines of different kinds
/// share one network.
trait Hosted {
    fn accepts(&self, packet: &Receive<'_>) -> bool;
    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>);
    fn handle_timeout(&mut self, now: Instant);
    fn poll_socket_request(&mut self) -> Option<SocketRequest>;
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit>;
    fn poll_event(&mut self) -> Option<Box<dyn AnyEvent>>;
    fn poll_timeout(&self) -> Option<Instant>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// The machine's end of the signaling channel, if it takes part in signaling.
    fn signal(&mut self) -> Option<&mut dyn SignalNode> {
        None
    }
}

/// A machine installed with [`Sim::set_signal_machine`]: the same as any other, plus its
/// [`SignalNode`] side. Downcasts see the machine itself.
struct WithSignal<M>(M);

impl<M> Hosted for WithSignal<M>
where
    M: SansIo + SignalNode + 'static,
    M::Event: Debug + 'static,
{
    fn accepts(&self, packet: &Receive<'_>) -> bool {
        self.0.accepts(packet)
    }
    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        self.0.handle_packet(now, packet);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.0.handle_timeout(now);
    }
    fn poll_socket_request(&mut self) -> Option<SocketRequest> {
        self.0.poll_socket_request()
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.0.poll_transmit(now, buf)
    }
    fn poll_event(&mut self) -> Option<Box<dyn AnyEvent>> {
        self.0
            .poll_event()
            .map(|e| Box::new(e) as Box<dyn AnyEvent>)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.0.poll_timeout()
    }
    fn as_any(&self) -> &dyn Any {
        &self.0
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        &mut self.0
    }
    fn signal(&mut self) -> Option<&mut dyn SignalNode> {
        Some(&mut self.0)
    }
}

trait AnyEvent: Debug {
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

impl<E: Debug + 'static> AnyEvent for E {
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

impl<M> Hosted for M
where
    M: SansIo + 'static,
    M::Event: Debug + 'static,
{
    fn accepts(&self, packet: &Receive<'_>) -> bool {
        SansIo::accepts(self, packet)
    }
    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        SansIo::handle_packet(self, now, packet);
    }
    fn handle_timeout(&mut self, now: Instant) {
        SansIo::handle_timeout(self, now);
    }
    fn poll_socket_request(&mut self) -> Option<SocketRequest> {
        SansIo::poll_socket_request(self)
    }
    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        SansIo::poll_transmit(self, now, buf)
    }
    fn poll_event(&mut self) -> Option<Box<dyn AnyEvent>> {
        SansIo::poll_event(self).map(|e| Box::new(e) as Box<dyn AnyEvent>)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        SansIo::poll_timeout(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

struct Host {
    addrs: Vec<IpAddr>,
    default_port: u16,
    machine: Option<Box<dyn Hosted>>,
    events: VecDeque<(Instant, Box<dyn AnyEvent>)>,
    /// The deadline a timer event is queued for, and its generation (older ones are stale).
    timer: Option<u64>,
    timer_generation: u64,
}

struct Middlebox {
    /// Translation (or filtering) for the external address's family.
    table: NatTable,
    /// Stateful filtering without translation for the other family (IPv6 through an IPv4 NAT),
    /// with the same filtering behaviour, as home routers do.
    passthrough: NatTable,
}

impl Middlebox {
    /// The table for traffic this box filters without translating.
    fn filter_only(&mut self) -> &mut NatTable {
        if self.table.config().translate {
            &mut self.passthrough
        } else {
            &mut self.table
        }
    }
}

enum Kind {
    Internet,
    Host(Box<Host>),
    Nat(Box<Middlebox>),
    BlockUdp,
}

struct Node {
    name: String,
    parent: Option<NodeId>,
    uplink: LinkConfig,
    up: LinkState,
    down: LinkState,
    kind: Kind,
    /// Addresses reachable below this node → the child that leads there. Lookups only.
    routes: FxHashMap<IpAddr, NodeId>,
}

/// An IP packet carrying UDP.
#[derive(Debug, Clone)]
struct Packet {
    src: SocketAddr,
    dst: SocketAddr,
    ttl: u8,
    payload: Vec<u8>,
}

impl Packet {
    const EMPTY: Packet = Packet {
        src: SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::UNSPECIFIED,
            0,
        )),
        dst: SocketAddr::V4(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::UNSPECIFIED,
            0,
        )),
        ttl: 0,
        payload: Vec::new(),
    };

    fn ip_len(&self) -> usize {
        self.payload.len()
            + if self.dst.is_ipv4() {
                IPV4_UDP_OVERHEAD
            } else {
                IPV6_UDP_OVERHEAD
            }
    }
}

enum Action {
    /// The packet in `slot` of the packet store arrives at `node`; `from_parent` tells the
    /// direction. Packets wait in a store rather than in the queue so that queue entries stay small.
    Arrive {
        node: NodeId,
        from_parent: bool,
        slot: u32,
    },
    /// The packet at the head of `lane` arrives. A lane holds the in-order arrivals of one
    /// direction of one link; only its head is in the queue, which keeps the queue as small as
    /// the number of busy links rather than the number of packets in flight.
    Lane { lane: u32 },
    /// A host's timer, valid only if `generation` is still current.
    Timer { host: NodeId, generation: u64 },
    /// Something on the signaling channel.
    Signal(channel::SignalAction),
}

/// An arrival waiting in a lane.
struct Pending {
    at: u64,
    seq: u64,
    node: NodeId,
    from_parent: bool,
    slot: u32,
}

struct Scheduled {
    at: u64,
    seq: u64,
    action: Action,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed, so that `BinaryHeap` pops the earliest (time, sequence) first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Capture {
    target: CaptureTarget,
    writer: PcapWriter<Vec<u8>>,
}

/// A deterministic discrete-event network.
///
/// Time is one epoch `Instant` plus an offset in nanoseconds; events run in (time, sequence)
/// order; all randomness comes from one ChaCha8 generator seeded at construction. The same seed,
/// topology and inputs give the same run, byte for byte in the [trace](Sim::enable_trace).
pub struct Sim {
    epoch: Instant,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Scheduled>,
    rng: ChaCha8Rng,
    nodes: Vec<Node>,
    stats: Stats,
    trace: Option<Vec<u8>>,
    captures: Vec<Capture>,
    buf: Vec<u8>,
    /// Per link direction (`2 × node + from_parent`): FIFO arrivals waiting behind the lane's head.
    lanes: Vec<VecDeque<Pending>>,
    /// Packets in flight, indexed by the slot their `Arrive` event names.
    in_flight: Vec<Packet>,
    free_slots: Vec<u32>,
    /// Payload buffers of finished packets, reused for new ones.
    spare_payloads: Vec<Vec<u8>>,
    /// The signaling channel: the server machine and every node's connections.
    signaling: channel::Signaling,
    /// First instant (ns since epoch) each label was [marked](Sim::mark).
    marks: BTreeMap<String, u64>,
    /// Address pairs the internet drops datagrams between, either way.
    blackholes: Vec<(IpAddr, IpAddr)>,
}

/// Most payload buffers kept for reuse.
const SPARE_PAYLOADS: usize = 4096;

impl Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sim")
            .field("now", &Duration::from_nanos(self.now))
            .field("nodes", &self.nodes.len())
            .field("queued", &self.queue.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl Sim {
    /// An empty network (just the internet) whose randomness all comes from `seed`.
    pub fn new(seed: u64) -> Self {
        // The epoch's absolute value never reaches a decision: every deadline is an offset from it.
        #[allow(clippy::disallowed_methods)]
        let epoch = Instant::now();
        Self {
            epoch,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            nodes: vec![Node {
                name: "internet".into(),
                parent: None,
                uplink: LinkConfig::default(),
                up: LinkState::default(),
                down: LinkState::default(),
                kind: Kind::Internet,
                routes: FxHashMap::default(),
            }],
            stats: Stats::default(),
            trace: None,
            captures: Vec::new(),
            buf: vec![0; TRANSMIT_BUF_LEN],
            lanes: vec![VecDeque::new(), VecDeque::new()],
            in_flight: Vec::new(),
            free_slots: Vec::new(),
            spare_payloads: Vec::new(),
            signaling: channel::Signaling::default(),
            marks: BTreeMap::new(),
            blackholes: Vec::new(),
        }
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.instant(self.now)
    }

    /// The virtual time elapsed since the start.
    pub fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    /// The instant the run started at.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// The virtual time of `at`: its offset from the [epoch](Sim::epoch), the number the trace
    /// prints (in nanoseconds) and the one to compare across runs.
    pub fn time_of(&self, at: Instant) -> Duration {
        at.saturating_duration_since(self.epoch)
    }

    /// Records that `label` happened now, the first time only, and writes it to the trace. With
    /// [`Sim::since_mark`] this measures from a moment the test chooses, such as the first
    /// `connect` call, to an event's instant.
    pub fn mark(&mut self, label: &str) {
        if !self.marks.contains_key(label) {
            self.marks.insert(label.to_owned(), self.now);
            self.trace_line(format_args!("mark {label}"));
        }
    }

    /// When `label` was first [marked](Sim::mark).
    pub fn marked(&self, label: &str) -> Option<Instant> {
        self.marks.get(label).map(|&at| self.instant(at))
    }

    /// Virtual time from the first [mark](Sim::mark) of `label` to `at` (zero if `at` is earlier).
    ///
    /// # Panics
    /// If `label` was never marked.
    pub fn since_mark(&self, label: &str, at: Instant) -> Duration {
        let mark = self
            .marked(label)
            .unwrap_or_else(|| panic!("{label:?} was never marked"));
        at.saturating_duration_since(mark)
    }

    /// A number drawn from the simulator's generator, to seed a machine's own RNG.
    pub fn fork_seed(&mut self) -> u64 {
        self.rng.random()
    }

    /// Datagram counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Starts recording a line per event (sends, drops, deliveries, timers, machine events).
    ///
    /// Lines carry virtual offsets, never absolute instants, so that runs compare byte for byte.
    /// Machine events are written with `{:?}`: an event that holds an `Instant` would print the
    /// process-specific epoch, so machines meant for traced runs keep instants out of their events.
    pub fn enable_trace(&mut self) {
        self.trace.get_or_insert_with(Vec::new);
    }

    /// The trace recorded so far (empty if tracing is off).
    pub fn trace(&self) -> &[u8] {
        self.trace.as_deref().unwrap_or(&[])
    }

    /// Adds a host under `parent` (the internet or a NAT) with the given addresses, reached over
    /// `link`.
    ///
    /// # Panics
    /// If `addrs` is empty, an address is already routed under `parent`, or `parent` is a host.
    pub fn add_host(
        &mut self,
        name: &str,
        parent: NodeId,
        addrs: &[IpAddr],
        link: LinkConfig,
    ) -> NodeId {
        assert!(!addrs.is_empty(), "a host needs at least one address");
        let host = Host {
            addrs: addrs.to_vec(),
            default_port: 0,
            machine: None,
            events: VecDeque::new(),
            timer: None,
            timer_generation: 0,
        };
        let id = self.push_node(name, parent, link, Kind::Host(Box::new(host)));
        for &addr in addrs {
            self.route(id, addr);
        }
        id
    }

    /// Adds a NAT (or, with `translate` off, a firewall) under `parent`, whose address on the
    /// parent's network is `external_ip`.
    pub fn add_nat(
        &mut self,
        name: &str,
        parent: NodeId,
        external_ip: IpAddr,
        config: NatConfig,
        link: LinkConfig,
    ) -> NodeId {
        let passthrough = NatConfig {
            translate: false,
            ..config.clone()
        };
        let translate = config.translate;
        let middlebox = Middlebox {
            table: NatTable::new(config, external_ip),
            passthrough: NatTable::new(passthrough, external_ip),
        };
        let id = self.push_node(name, parent, link, Kind::Nat(Box::new(middlebox)));
        if translate {
            self.route(id, external_ip);
        }
        id
    }

    /// Adds a middlebox under `parent` that drops every UDP datagram in both directions; hosts and
    /// NATs go under it.
    pub fn add_udp_blocker(&mut self, name: &str, parent: NodeId, link: LinkConfig) -> NodeId {
        self.push_node(name, parent, link, Kind::BlockUdp)
    }

    fn push_node(&mut self, name: &str, parent: NodeId, link: LinkConfig, kind: Kind) -> NodeId {
        assert!(
            !matches!(self.node(parent).kind, Kind::Host(_)),
            "{parent} is a host; only the internet, NATs and blockers have children"
        );
        let id = NodeId(u32::try_from(self.nodes.len()).expect("fewer than 2^32 nodes"));
        self.nodes.push(Node {
            name: name.to_owned(),
            parent: Some(parent),
            uplink: link,
            up: LinkState::default(),
            down: LinkState::default(),
            kind,
            routes: FxHashMap::default(),
        });
        self.lanes.resize_with(self.nodes.len() * 2, VecDeque::new);
        id
    }

    /// Makes `addr`, owned by `owner`, reachable from above: each ancestor learns which child leads
    /// there, up to the first NAT that translates that family (beyond it, the NAT's own external
    /// address is what is seen).
    fn route(&mut self, owner: NodeId, addr: IpAddr) {
        let mut child = owner;
        while let Some(parent) = self.node(child).parent {
            let node = &mut self.nodes[parent.0 as usize];
            let previous = node.routes.insert(addr, child);
            assert!(
                previous.is_none(),
                "{addr} is already routed under {parent}"
            );
            let hides = match &node.kind {
                Kind::Nat(m) => {
                    m.table.config().translate && m.table.external_ip().is_ipv4() == addr.is_ipv4()
                }
                Kind::Internet => true,
                Kind::Host(_) | Kind::BlockUdp => false,
            };
            if hides {
                break;
            }
            child = parent;
        }
    }

    /// Undoes [`route`](Self::route): the ancestors of `owner` forget the way to `addr`.
    fn unroute(&mut self, owner: NodeId, addr: IpAddr) {
        let mut child = owner;
        while let Some(parent) = self.node(child).parent {
            let node = &mut self.nodes[parent.0 as usize];
            if node.routes.get(&addr) != Some(&child) {
                break;
            }
            node.routes.remove(&addr);
            child = parent;
        }
    }

    fn node(&self, id: NodeId) -> &Node {
        &self.nodes[id.0 as usize]
    }

    fn host_mut(&mut self, id: NodeId) -> &mut Host {
        match &mut self.nodes[id.0 as usize].kind {
            Kind::Host(h) => h,
            _ => panic!("{id} is not a host"),
        }
    }

    /// The addresses of a host.
    pub fn host_addrs(&self, host: NodeId) -> &[IpAddr] {
        match &self.node(host).kind {
            Kind::Host(h) => &h.addrs,
            _ => panic!("{host} is not a host"),
        }
    }

    /// Live bindings of a NAT or firewall right now.
    pub fn nat_bindings(&mut self, nat: NodeId) -> usize {
        let now = self.now();
        match &mut self.nodes[nat.0 as usize].kind {
            Kind::Nat(m) => m.table.binding_count(now) + m.passthrough.binding_count(now),
            _ => panic!("{nat} is not a NAT"),
        }
    }

    /// Runs `machine` on `host`; transmits without a source go out from `default_port`. The machine
    /// is polled at once (it may send or set a timer from the start).
    pub fn set_machine<M>(&mut self, host: NodeId, default_port: u16, machine: M)
    where
        M: SansIo + 'static,
        M::Event: Debug + 'static,
    {
        let h = self.host_mut(host);
        h.machine = Some(Box::new(machine));
        h.default_port = default_port;
        self.drain(host);
    }

    /// Like [`Sim::set_machine`], for a machine that also has a [`SignalNode`] side: it can then
    /// use the signaling channel ([`Sim::signal_connect`], [`crate::signal`]). Frames it polls go
    /// out right after its transmits, on the same drain.
    pub fn set_signal_machine<M>(&mut self, host: NodeId, default_port: u16, machine: M)
    where
        M: SansIo + SignalNode + 'static,
        M::Event: Debug + 'static,
    {
        let h = self.host_mut(host);
        h.machine = Some(Box::new(WithSignal(machine)));
        h.default_port = default_port;
        self.drain(host);
    }

    /// The machine on `host`.
    ///
    /// # Panics
    /// If the host runs no machine or one of another type.
    pub fn machine<M: 'static>(&self, host: NodeId) -> &M {
        match &self.node(host).kind {
            Kind::Host(h) => h
                .machine
                .as_ref()
                .and_then(|m| m.as_any().downcast_ref())
                .unwrap_or_else(|| panic!("{host} runs no machine of that type")),
            _ => panic!("{host} is not a host"),
        }
    }

    /// Gives `f` the machine on `host` and the current instant (to issue commands), then drains it
    /// in the contract's order.
    pub fn with_machine<M: 'static, R>(
        &mut self,
        host: NodeId,
        f: impl FnOnce(&mut M, Instant) -> R,
    ) -> R {
        let now = self.now();
        let machine = self
            .host_mut(host)
            .machine
            .as_mut()
            .and_then(|m| m.as_any_mut().downcast_mut::<M>())
            .unwrap_or_else(|| panic!("{host} runs no machine of that type"));
        let result = f(machine, now);
        self.drain(host);
        result
    }

    /// Takes the events `host`'s machine has reported, with when it reported them.
    ///
    /// # Panics
    /// If an event is not an `E`.
    pub fn take_events<E: 'static>(&mut self, host: NodeId) -> Vec<(Instant, E)> {
        self.host_mut(host)
            .events
            .drain(..)
            .map(|(at, e)| {
                let e = e
                    .into_any()
                    .downcast::<E>()
                    .unwrap_or_else(|_| panic!("{host}: event of another type"));
                (at, *e)
            })
            .collect()
    }

    /// Starts a pcap capture (nanosecond timestamps from the virtual clock, IP and UDP headers
    /// synthesized, link type RAW).
    pub fn capture(&mut self, target: CaptureTarget) -> CaptureId {
        let writer = PcapWriter::new(Vec::new()).expect("writing to a Vec cannot fail");
        self.captures.push(Capture { target, writer });
        CaptureId(self.captures.len() - 1)
    }

    /// The pcap file recorded so far by a capture.
    pub fn capture_bytes(&self, id: CaptureId) -> &[u8] {
        self.captures[id.0].writer.get_ref()
    }

    /// When the next queued event happens, if any.
    pub fn next_event(&self) -> Option<Instant> {
        self.queue.peek().map(|s| self.instant(s.at))
    }

    /// Runs every event up to and including `deadline`, then sets the clock to `deadline`.
    pub fn run_until(&mut self, deadline: Instant) {
        let deadline = self.offset(deadline);
        while self.queue.peek().is_some_and(|s| s.at <= deadline) {
            self.step();
        }
        self.now = self.now.max(deadline);
    }

    /// Runs for `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) {
        let deadline = self.now() + duration;
        self.run_until(deadline);
    }

    /// Runs the next event; returns `false` if there was none.
    pub fn step(&mut self) -> bool {
        let Some(Scheduled { at, action, .. }) = self.queue.pop() else {
            return false;
        };
        debug_assert!(at >= self.now, "time never goes backwards");
        self.now = at;
        match action {
            Action::Arrive {
                node,
                from_parent,
                slot,
            } => self.arrive_from_slot(node, from_parent, slot),
            Action::Lane { lane } => {
                let lanes = &mut self.lanes[lane as usize];
                let head = lanes.pop_front().expect("a lane in the queue is not empty");
                if let Some(next) = lanes.front() {
                    self.queue.push(Scheduled {
                        at: next.at,
                        seq: next.seq,
                        action: Action::Lane { lane },
                    });
                }
                self.arrive_from_slot(head.node, head.from_parent, head.slot);
            }
            Action::Timer { host, generation } => self.fire_timer(host, generation),
            Action::Signal(action) => self.run_signal_action(action),
        }
        true
    }

    fn arrive_from_slot(&mut self, node: NodeId, from_parent: bool, slot: u32) {
        let packet = std::mem::replace(&mut self.in_flight[slot as usize], Packet::EMPTY);
        self.free_slots.push(slot);
        self.arrive(node, from_parent, packet);
    }

    fn instant(&self, offset: u64) -> Instant {
        self.epoch + Duration::from_nanos(offset)
    }

    fn offset(&self, at: Instant) -> u64 {
        nanos(at.saturating_duration_since(self.epoch))
    }

    fn schedule(&mut self, at: u64, action: Action) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            action,
        });
    }

    fn trace_line(&mut self, line: fmt::Arguments<'_>) {
        if let Some(trace) = &mut self.trace {
            let _ = writeln!(trace, "{} {}", self.now, line);
        }
    }

    /// The NAT (or firewall) `nat` reboots: it forgets every binding, so each flow's next
    /// datagram out gets a new mapping (a new external port, unless ports are preserved and
    /// free) and datagrams to the old ones are dropped.
    ///
    /// # Panics
    /// If `nat` is not a NAT.
    pub fn reset_nat(&mut self, nat: NodeId) {
        match &mut self.nodes[nat.0 as usize].kind {
            Kind::Nat(m) => {
                m.table.forget();
                m.passthrough.forget();
            }
            _ => panic!("{nat} is not a NAT"),
        }
    }

    /// The NAT (or firewall) `nat` rebinds every flow: it forgets every binding, and the
    /// external ports they held stay taken (by other flows) for ten minutes, so each flow's next
    /// datagram out gets a new external port, even through a port-preserving NAT; datagrams to
    /// the old ports are dropped. This is what flushing a Linux router's conntrack table does
    /// when other hosts' flows take the freed ports first.
    ///
    /// # Panics
    /// If `nat` is not a NAT.
    pub fn rebind_nat(&mut self, nat: NodeId) {
        let until = self.now() + Duration::from_secs(600);
        match &mut self.nodes[nat.0 as usize].kind {
            Kind::Nat(m) => {
                m.table.rebind(until);
                m.passthrough.forget();
            }
            _ => panic!("{nat} is not a NAT"),
        }
    }

    /// Moves `host` with its addresses under `parent` (another NAT, or the internet), as a
    /// laptop that joins another network keeping its address (two home routers that hand out
    /// the same private range): datagrams already on their way still arrive; from now on its
    /// datagrams leave through `parent`, and only `parent`'s side routes to it.
    ///
    /// # Panics
    /// If `host` is not a host, `parent` is a host, or one of the host's addresses is already
    /// routed under `parent`.
    pub fn move_host(&mut self, host: NodeId, parent: NodeId) {
        assert!(
            !matches!(self.node(parent).kind, Kind::Host(_)),
            "{parent} is a host; only the internet, NATs and blockers have children"
        );
        let addrs = self.host_addrs(host).to_vec();
        for &addr in &addrs {
            self.unroute(host, addr);
        }
        self.nodes[host.0 as usize].parent = Some(parent);
        for &addr in &addrs {
            self.route(host, addr);
        }
    }

    /// Makes the internet drop every datagram between `a` and `b` (either way) while `on`, as
    /// when a route between two networks fails while both still reach everything else.
    pub fn set_blackhole(&mut self, a: IpAddr, b: IpAddr, on: bool) {
        self.blackholes
            .retain(|&(x, y)| !((x, y) == (a, b) || (x, y) == (b, a)));
        if on {
            self.blackholes.push((a, b));
        }
    }

    fn drop_packet(&mut self, at: NodeId, reason: Drop, packet: Packet) {
        *self.stats.drops.entry(reason).or_insert(0) += 1;
        if self.trace.is_some() {
            let name = self.node(at).name.clone();
            self.trace_line(format_args!(
                "drop {name} {:?} {}->{}",
                reason, packet.src, packet.dst
            ));
        }
        self.recycle(packet.payload);
    }

    fn recycle(&mut self, mut payload: Vec<u8>) {
        if self.spare_payloads.len() < SPARE_PAYLOADS && payload.capacity() > 0 {
            payload.clear();
            self.spare_payloads.push(payload);
        }
    }

    fn store(&mut self, packet: Packet) -> u32 {
        match self.free_slots.pop() {
            Some(slot) => {
                self.in_flight[slot as usize] = packet;
                slot
            }
            None => {
                self.in_flight.push(packet);
                u32::try_from(self.in_flight.len() - 1).expect("fewer than 2^32 packets in flight")
            }
        }
    }

    fn record(&mut self, target: CaptureTarget, packet: &Packet) {
        if self.captures.is_empty() {
            return;
        }
        let at = Duration::from_nanos(self.now);
        for capture in self.captures.iter_mut().filter(|c| c.target == target) {
            let _ =
                capture
                    .writer
                    .write_udp(at, packet.src, packet.dst, packet.ttl, &packet.payload);
        }
    }

    /// Drains a host's machine in the contract's order: socket requests, transmits (then signaling frames),
    /// events, then its timeout. Signaling requests run last, with the machine back in place.
    fn drain(&mut self, host: NodeId) {
        let now = self.now();
        let Some(mut machine) = self.host_mut(host).machine.take() else {
            return;
        };
        // Every port of a simulated host receives, so binds have nothing to do; they are drained
        // so that the contract's order holds and the machine's queue stays empty.
        while machine.poll_socket_request().is_some() {}
        let mut buf = std::mem::take(&mut self.buf);
        while let Some(transmit) = machine.poll_transmit(now, &mut buf) {
            let len = transmit.len.min(buf.len());
            self.send_from_host(host, transmit, &buf[..len]);
        }
        self.buf = buf;
        let requests = match machine.signal() {
            Some(node) => self.take_signal_output(host, node),
            None => Vec::new(),
        };
        while let Some(event) = machine.poll_event() {
            if self.trace.is_some() {
                let name = self.node(host).name.clone();
                self.trace_line(format_args!("event {name} {event:?}"));
            }
            self.host_mut(host).events.push_back((now, event));
        }
        let deadline = machine.poll_timeout().map(|t| self.offset(t).max(self.now));
        let h = self.host_mut(host);
        h.machine = Some(machine);
        if deadline != h.timer {
            h.timer = deadline;
            h.timer_generation += 1;
            let generation = h.timer_generation;
            if let Some(at) = deadline {
                self.schedule(at, Action::Timer { host, generation });
            }
        }
        for request in requests {
            self.run_signal_request(host, request);
        }
    }

    fn fire_timer(&mut self, host: NodeId, generation: u64) {
        let now = self.now();
        let h = self.host_mut(host);
        if h.timer_generation != generation {
            return;
        }
        h.timer = None;
        if let Some(machine) = h.machine.as_mut() {
            machine.handle_timeout(now);
        }
        if self.trace.is_some() {
            let name = self.node(host).name.clone();
            self.trace_line(format_args!("timer {name}"));
        }
        self.drain(host);
    }

    fn send_from_host(&mut self, host: NodeId, transmit: Transmit, payload: &[u8]) {
        self.stats.sent += 1;
        let h = match &self.node(host).kind {
            Kind::Host(h) => h,
            _ => unreachable!("only hosts run machines"),
        };
        let family_addr = h
            .addrs
            .iter()
            .copied()
            .find(|a| a.is_ipv4() == transmit.destination.is_ipv4());
        let src = match transmit.source {
            None => family_addr.map(|ip| SocketAddr::new(ip, h.default_port)),
            Some(s) if s.ip().is_unspecified() => {
                family_addr.map(|ip| SocketAddr::new(ip, s.port()))
            }
            Some(s)
                if h.addrs.contains(&s.ip()) && s.is_ipv4() == transmit.destination.is_ipv4() =>
            {
                Some(s)
            }
            Some(named) => {
                let packet = Packet {
                    src: named,
                    dst: transmit.destination,
                    ttl: 0,
                    payload: Vec::new(),
                };
                self.drop_packet(host, Drop::BadSource, packet);
                return;
            }
        };
        let ttl = transmit.hints.ttl.unwrap_or(DEFAULT_TTL);
        let Some(src) = src else {
            // No address of the destination's family: trace the port the machine meant to use.
            let port = transmit.source.map_or(h.default_port, |s| s.port());
            let packet = Packet {
                src: SocketAddr::new(unspecified_like(transmit.destination.ip()), port),
                dst: transmit.destination,
                ttl,
                payload: Vec::new(),
            };
            self.drop_packet(host, Drop::NoAddressForFamily, packet);
            return;
        };
        let mut buffer = self.spare_payloads.pop().unwrap_or_default();
        buffer.extend_from_slice(payload);
        let packet = Packet {
            src,
            dst: transmit.destination,
            ttl,
            payload: buffer,
        };
        if self.trace.is_some() {
            let name = self.node(host).name.clone();
            self.trace_line(format_args!(
                "send {name} {}->{} ttl={} len={}",
                src,
                packet.dst,
                ttl,
                payload.len()
            ));
        }
        self.record(CaptureTarget::Host(host), &packet);
        self.send_up(host, packet);
    }

    /// Puts a packet on `from`'s uplink towards its parent.
    fn send_up(&mut self, from: NodeId, packet: Packet) {
        let Some(parent) = self.node(from).parent else {
            self.drop_packet(from, Drop::NoRoute, packet);
            return;
        };
        self.record(CaptureTarget::Link(from), &packet);
        let node = &mut self.nodes[from.0 as usize];
        let crossing = node
            .up
            .send(&node.uplink, self.now, packet.ip_len(), &mut self.rng);
        self.cross(from, crossing, parent, false, packet);
    }

    /// Puts a packet on `to`'s uplink towards `to`.
    fn send_down(&mut self, to: NodeId, packet: Packet) {
        self.record(CaptureTarget::Link(to), &packet);
        let node = &mut self.nodes[to.0 as usize];
        let crossing = node
            .down
            .send(&node.uplink, self.now, packet.ip_len(), &mut self.rng);
        self.cross(to, crossing, to, true, packet);
    }

    fn cross(
        &mut self,
        link: NodeId,
        crossing: Result<crate::link::Crossing, LinkDrop>,
        node: NodeId,
        from_parent: bool,
        packet: Packet,
    ) {
        match crossing {
            Err(reason) => self.drop_packet(link, Drop::Link(reason), packet),
            Ok(c) => {
                let lane = link.0 * 2 + u32::from(from_parent);
                // The original first: the copy's FIFO arrival was drawn after it, so it is no
                // earlier, and lanes must be filled in arrival order.
                let copy = c.duplicate.map(|arrival| (arrival, packet.clone()));
                let slot = self.store(packet);
                self.schedule_arrival(lane, c.arrival, node, from_parent, slot);
                if let Some((arrival, copy)) = copy {
                    self.stats.duplicated += 1;
                    let slot = self.store(copy);
                    self.schedule_arrival(lane, arrival, node, from_parent, slot);
                }
            }
        }
    }

    fn schedule_arrival(
        &mut self,
        lane: u32,
        arrival: crate::link::Arrival,
        node: NodeId,
        from_parent: bool,
        slot: u32,
    ) {
        if !arrival.fifo {
            return self.schedule(
                arrival.at,
                Action::Arrive {
                    node,
                    from_parent,
                    slot,
                },
            );
        }
        self.seq += 1;
        let pending = Pending {
            at: arrival.at,
            seq: self.seq,
            node,
            from_parent,
            slot,
        };
        let queue = &mut self.lanes[lane as usize];
        debug_assert!(
            queue.back().is_none_or(|last| last.at <= pending.at),
            "lanes are FIFO"
        );
        if queue.is_empty() {
            self.queue.push(Scheduled {
                at: pending.at,
                seq: pending.seq,
                action: Action::Lane { lane },
            });
        }
        queue.push_back(pending);
    }

    fn arrive(&mut self, id: NodeId, from_parent: bool, mut packet: Packet) {
        let now = self.now();
        let node = &mut self.nodes[id.0 as usize];
        match &mut node.kind {
            Kind::Host(_) => self.deliver(id, packet),
            Kind::BlockUdp => self.drop_packet(id, Drop::UdpBlocked, packet),
            Kind::Internet => {
                if !decrement_ttl(&mut packet) {
                    return self.drop_packet(id, Drop::TtlExpired, packet);
                }
                let (src, dst) = (packet.src.ip(), packet.dst.ip());
                if self
                    .blackholes
                    .iter()
                    .any(|&(a, b)| (a, b) == (src, dst) || (a, b) == (dst, src))
                {
                    return self.drop_packet(id, Drop::Blackholed, packet);
                }
                match node.routes.get(&packet.dst.ip()).copied() {
                    Some(child) => self.send_down(child, packet),
                    None => self.drop_packet(id, Drop::NoRoute, packet),
                }
            }
            Kind::Nat(m) => {
                if !decrement_ttl(&mut packet) {
                    return self.drop_packet(id, Drop::TtlExpired, packet);
                }
                let translating = m.table.config().translate
                    && m.table.external_ip().is_ipv4() == packet.dst.is_ipv4();
                let to_self = translating && packet.dst.ip() == m.table.external_ip();
                let inside = node.routes.get(&packet.dst.ip()).copied();
                let verdict = if !from_parent {
                    if to_self {
                        // Hairpin: translate the source as for any outbound datagram, then deliver
                        // to the binding the destination names.
                        m.table
                            .outbound(now, packet.src, packet.dst, &mut self.rng)
                            .and_then(|src| m.table.hairpin(now, packet.dst).map(|dst| (src, dst)))
                            .map(|(src, dst)| {
                                packet.src = src;
                                packet.dst = dst;
                                true
                            })
                    } else if inside.is_some() {
                        Ok(true)
                    } else if translating {
                        m.table
                            .outbound(now, packet.src, packet.dst, &mut self.rng)
                            .map(|src| {
                                packet.src = src;
                                false
                            })
                    } else {
                        m.filter_only()
                            .outbound(now, packet.src, packet.dst, &mut self.rng)
                            .map(|src| {
                                packet.src = src;
                                false
                            })
                    }
                } else if to_self {
                    m.table.inbound(now, packet.src, packet.dst).map(|dst| {
                        packet.dst = dst;
                        true
                    })
                } else if inside.is_some() {
                    m.filter_only()
                        .inbound(now, packet.src, packet.dst)
                        .map(|_| true)
                } else {
                    return self.drop_packet(id, Drop::NoRoute, packet);
                };
                match verdict {
                    Err(reason) => self.drop_packet(id, Drop::Nat(reason), packet),
                    Ok(false) => self.send_up(id, packet),
                    Ok(true) => match self.node(id).routes.get(&packet.dst.ip()).copied() {
                        Some(child) => self.send_down(child, packet),
                        None => self.drop_packet(id, Drop::NoRoute, packet),
                    },
                }
            }
        }
    }

    fn deliver(&mut self, host: NodeId, packet: Packet) {
        let now = self.now();
        let h = self.host_mut(host);
        if !h.addrs.contains(&packet.dst.ip()) {
            return self.drop_packet(host, Drop::NoRoute, packet);
        }
        let Some(mut machine) = h.machine.take() else {
            return self.drop_packet(host, Drop::NotAccepted, packet);
        };
        let receive = Receive {
            source: packet.src,
            local: packet.dst,
            payload: &packet.payload,
        };
        let accepted = machine.accepts(&receive);
        if accepted {
            machine.handle_packet(now, receive);
        }
        self.host_mut(host).machine = Some(machine);
        if !accepted {
            return self.drop_packet(host, Drop::NotAccepted, packet);
        }
        self.stats.delivered += 1;
        if self.trace.is_some() {
            let name = self.node(host).name.clone();
            self.trace_line(format_args!(
                "deliver {name} {}->{} len={}",
                packet.src,
                packet.dst,
                packet.payload.len()
            ));
        }
        self.record(CaptureTarget::Host(host), &packet);
        self.recycle(packet.payload);
        self.drain(host);
    }
}

/// The unspecified address of `ip`'s family.
fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
    }
}

/// Decrements the TTL as a router does before forwarding; `false` if the packet dies here.
fn decrement_ttl(packet: &mut Packet) -> bool {
    if packet.ttl <= 1 {
        return false;
    }
    packet.ttl -= 1;
    true
}
