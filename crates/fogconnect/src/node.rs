//! The node: one UDP socket's worth of FogConnect, sans-IO.
//!
//! A [`Node`] owns every machine a peer needs and is itself one machine for the driver:
//! - fog-stun's RFC 5780 [`Discovery`] at start, from the node's base port (so that the report's
//!   mapped address is the base socket's server-reflexive address);
//! - fog-signal's [`Client`] over whatever carries its text frames (a WebSocket in fog-mio's world,
//!   fog-sim's reliable channel in the simulator): the `handle_signal_*` / `poll_signal_frame`
//!   methods;
//! - one fog-ice [`Agent`] per session, built from both sides' descriptions and NAT behaviours,
//!   started at the instant the signaling server chose (punch sync).
//!
//! [`Node::connect`] is the application's call: it waits for discovery if need be, measures the
//! NAT's current port when the node's own port must be predicted, sends the offer, and reports
//! [`Event::Connected`] when a path is verified. The answering side does the same on an offer.
//!
//! Candidates are kept fresh: [`Node::set_interfaces`] brings the host candidates of further
//! interface addresses (IPv4 and IPv6) in and out, and a Binding to the STUN server from the
//! base every [`NodeConfig::keepalive`] keeps the NAT's mapping and notices when it changes
//! ([`Node::regather`] does it at once). Every change is reported as
//! [`Event::CandidatesChanged`] and trickled to the peers of every session.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::nat::{Behaviour, Mapping, PortPattern};
use fog_core::pairing::Who;
use fog_core::{Receive, SansIo, SocketRequest, Transmit};
use fog_ice::agent::{self, Agent, AgentConfig};
use fog_ice::candidate::{self as ice_candidate, Kind};
use fog_ice::strategy::{Plan, StrategyConfig};
use fog_signal::client::{Client, ClientConfig, Event as SignalEvent};
use fog_signal::msg::{self, CandidateKind, Description, SessionId, Transport};
use fog_signal::{KeyPair, PeerId};
use fog_stun::discovery::{self, Discovery, DiscoveryConfig, Report};
use fog_stun::rank::{self, RankConfig, Ranker};
use fog_stun::wire::{BindingRequest, BindingResponse, TransactionId};
use fog_turn::client::{Client as TurnClient, ClientConfig as TurnConfig, Event as TurnEvent};

/// Everything a [`Node`] needs.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's identity.
    pub key: KeyPair,
    /// The signaling server's name (signed into authentication).
    pub realm: String,
    /// An alias to claim.
    pub alias: Option<String>,
    /// The RFC 5780 STUN server (primary address).
    pub stun: SocketAddr,
    /// The main UDP socket: checks and the path leave from it.
    pub base: SocketAddr,
    /// How punching is chosen.
    pub strategy: StrategyConfig,
    /// Transports offered, most preferred first.
    pub transports: Vec<Transport>,
    /// Seeds every machine's randomness (transaction IDs, credentials, tie-breakers).
    pub seed: u64,
    /// Discovery's port samples (default 4: enough to read a sequential pattern).
    pub port_samples: u16,
    /// Test hairpinning during discovery (default off: it does not change punching).
    pub hairpinning: bool,
    /// The TURN server to allocate on, with credentials the signaling server hands out
    /// (`None`: no relay).
    pub turn: Option<SocketAddr>,
    /// Direct paths allowed (default). When off, the node describes only its relayed address,
    /// so the peer never learns its own, and every connection goes through a relay.
    pub direct: bool,
    /// Further local addresses to use, each a host candidate on its own socket at the base's
    /// port: the machine's other interfaces, IPv6 ones included (a driver gathers them, e.g.
    /// fog-mio's `interfaces`; loopback and link-local addresses are the caller's choice).
    /// Default none. [`Node::set_interfaces`] changes them later.
    pub interfaces: Vec<IpAddr>,
    /// How often the base socket sends a Binding to the STUN server once discovery is done
    /// (default 15 s): it keeps the NAT's mapping to the server, and a changed mapped address
    /// is a new server-reflexive candidate. Below the shortest UDP mapping timeout seen in the
    /// field (RFC 4787 REQ-5 asks for at least 2 minutes, but many NATs keep 30 s).
    pub keepalive: Duration,
    /// Other servers the node may use instead of `stun` and `turn` (further fogd instances,
    /// say). When there are any, the node first measures the RTT to every STUN server, `stun`
    /// first, and uses the nearest for discovery, with the TURN server beside it; the order
    /// given is the preference, which a clearly nearer server overrides
    /// ([`fog_stun::rank`]). Default none.
    pub alternatives: Vec<ServerChoice>,
}

/// A STUN server, and the TURN server that goes with it (see [`NodeConfig::alternatives`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerChoice {
    /// The RFC 5780 STUN server (primary address).
    pub stun: SocketAddr,
    /// The TURN server beside it, if any.
    pub turn: Option<SocketAddr>,
}

impl NodeConfig {
    /// A configuration with the defaults above.
    pub fn new(
        key: KeyPair,
        realm: impl Into<String>,
        stun: SocketAddr,
        base: SocketAddr,
        seed: u64,
    ) -> Self {
        NodeConfig {
            key,
            realm: realm.into(),
            alias: None,
            stun,
            base,
            strategy: StrategyConfig::default(),
            transports: vec![Transport::Quic],
            seed,
            port_samples: 4,
            hairpinning: false,
            turn: None,
            direct: true,
            interfaces: Vec::new(),
            keepalive: Duration::from_secs(15),
            alternatives: Vec::new(),
        }
    }
}

/// How a connection's path goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Via {
    /// Straight between the two nodes' sockets (punched).
    Direct,
    /// Through a TURN relay (ours or the peer's).
    Turn,
    /// Through the signaling server itself (`relay` frames), when a node's network blocks
    /// UDP; the path's addresses are then unspecified (`0.0.0.0:0`).
    Signaling,
}

impl Via {
    /// Whether the path goes through a relay of either kind.
    pub fn is_relayed(self) -> bool {
        self != Via::Direct
    }
}

/// What the node reports.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Discovery finished: the NAT's behaviour and the base socket's public address.
    Ready {
        /// What the NAT does.
        behaviour: Behaviour,
        /// The base socket's server-reflexive address, if UDP passes.
        public: Option<SocketAddr>,
    },
    /// The signaling server accepted the node.
    SignalingUp,
    /// A connection has a verified path: direct, or through a relay while punching goes on.
    Connected {
        /// The connection (the signaling session).
        session: SessionId,
        /// The peer.
        peer: PeerId,
        /// Our socket (our relayed address for a path through our own allocation).
        local: SocketAddr,
        /// The peer's address on the path.
        remote: SocketAddr,
        /// The path's round trip.
        rtt: Duration,
        /// How the path goes.
        via: Via,
    },
    /// A connected session moved to another path: up to a direct one when punching succeeds,
    /// back to the relay when the direct one dies. The connection stays.
    PathChanged {
        /// The connection.
        session: SessionId,
        /// Our socket.
        local: SocketAddr,
        /// The peer's address.
        remote: SocketAddr,
        /// The new path's round trip.
        rtt: Duration,
        /// How the path goes.
        via: Via,
    },
    /// Our TURN allocation is ready: relayed candidates from now on.
    RelayReady {
        /// The relayed transport address.
        relayed: SocketAddr,
    },
    /// Punching found no direct path in time; a relayed path, if any, stays.
    DirectFailed {
        /// The connection.
        session: SessionId,
        /// The peer.
        peer: PeerId,
    },
    /// The answer to [`Node::lookup`].
    LookupResult {
        /// The peer the name belongs to, if any.
        peer: Option<PeerId>,
        /// Whether it is connected to the signaling server now.
        online: bool,
    },
    /// A datagram from the peer of a connection (sent with [`Node::send`]).
    Data {
        /// The connection.
        session: SessionId,
        /// The datagram.
        data: Vec<u8>,
    },
    /// The nearest of the configured servers was measured and chosen (only with
    /// [`NodeConfig::alternatives`]); discovery and the relay use it.
    ServerChosen {
        /// The STUN server chosen.
        stun: SocketAddr,
        /// The TURN server that goes with it.
        turn: Option<SocketAddr>,
        /// Every STUN server's smallest RTT, in the order configured (`None`: no answer).
        rtts: Vec<(SocketAddr, Option<Duration>)>,
    },
    /// Our candidates changed: an interface address came or went ([`Node::set_interfaces`]),
    /// or the NAT mapped the base socket anew (the keepalive or [`Node::regather`] saw a new
    /// server-reflexive address). New ones were trickled to the peer of every session.
    CandidatesChanged {
        /// Candidates that are new.
        added: Vec<ice_candidate::Candidate>,
        /// Addresses that are no longer ours.
        removed: Vec<SocketAddr>,
    },
    /// A connection's path stopped answering.
    PathLost {
        /// The connection.
        session: SessionId,
    },
    /// A `connect` or an answer could not go out (the reason is for people).
    Error {
        /// The connection, once it has one.
        session: Option<SessionId>,
        /// What went wrong.
        message: String,
    },
}

#[derive(Debug)]
struct Session {
    id: Option<SessionId>,
    peer: PeerId,
    offerer: bool,
    /// The signaling request of our offer, until the server names the session.
    request: Option<u32>,
    /// The peer's description, once it arrived.
    remote: Option<Description>,
    credentials: agent::Credentials,
    agent: Option<Agent>,
    punch_at: Option<Instant>,
    /// The answerer's quiet punching ends here (the punch sync's instant).
    quiet_until: Option<Instant>,
    /// The relay over signaling, when either side's network blocks UDP.
    signal_relay: Option<SignalRelay>,
    connected: bool,
    /// Candidates that changed while our offer was on its way (no session ID to trickle on
    /// yet): trickled once the server names the session.
    untrickled: Vec<ice_candidate::Candidate>,
}

impl Session {
    fn new(peer: PeerId, offerer: bool, credentials: agent::Credentials) -> Session {
        Session {
            id: None,
            peer,
            offerer,
            request: None,
            remote: None,
            credentials,
            agent: None,
            punch_at: None,
            quiet_until: None,
            signal_relay: None,
            connected: false,
            untrickled: Vec::new(),
        }
    }
}

/// The relay over signaling of one session: a probe and its echo verify it, a probe every
/// [`SIGNAL_RELAY_KEEPALIVE`] keeps the session alive on the server.
#[derive(Debug, Clone, Copy)]
struct SignalRelay {
    /// When the outstanding probe left.
    probe_sent: Option<Instant>,
    /// When the next probe is due.
    next_probe: Instant,
}

/// A probe on the relay over signaling (first byte), its echo, and an application datagram.
const RELAY_PROBE: u8 = 0;
const RELAY_ECHO: u8 = 1;
const RELAY_DATA: u8 = 2;
/// The framing byte of an application datagram on a UDP path (fog-core's demux table).
const DATA: u8 = fog_core::FogFraming::Data.byte();
/// The largest datagram [`Node::send`] takes: what fits one relayed frame (the relay over
/// signaling carries at most 1,400 bytes, our framing byte included).
pub const MAX_DATAGRAM: usize = 1_399;

/// Why [`Node::send`] did not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No such session.
    UnknownSession,
    /// The session has no path yet (wait for [`Event::Connected`]).
    NotConnected,
    /// The datagram is longer than [`MAX_DATAGRAM`].
    TooLong,
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::UnknownSession => f.write_str("no such session"),
            SendError::NotConnected => f.write_str("the session has no path yet"),
            SendError::TooLong => write!(f, "datagrams are at most {MAX_DATAGRAM} bytes"),
        }
    }
}

impl std::error::Error for SendError {}
/// Keepalive probes on the relay over signaling: well inside the server's 120 s session
/// lifetime, which each relay frame restarts.
const SIGNAL_RELAY_KEEPALIVE: Duration = Duration::from_secs(30);
/// The addresses of a path through the signaling server.
const UNSPECIFIED: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// An application's `connect` waiting for discovery or for the port refresh.
#[derive(Debug)]
struct PendingConnect {
    peer: PeerId,
    service: u16,
}

/// A plain Binding to the STUN server from one of our sockets, retransmitted on a fixed
/// interval a few times: the port refresh and the keepalive both are one.
#[derive(Debug)]
struct Probe {
    id: TransactionId,
    local: SocketAddr,
    /// When the next (re)transmission is due.
    next_at: Instant,
    sent: u32,
}

impl Probe {
    /// The next transmission to `server` if one is due: at most `tries`, `rto` apart.
    fn poll(
        &mut self,
        now: Instant,
        buf: &mut [u8],
        server: SocketAddr,
        rto: Duration,
        tries: u32,
    ) -> Option<Transmit> {
        if self.sent >= tries || now < self.next_at {
            return None;
        }
        self.sent += 1;
        self.next_at = now + rto;
        let len = BindingRequest::new(self.id).encode(buf).ok()?;
        Some(Transmit::new(server, len).from_source(self.local))
    }

    /// Whether every try went out and the last one's wait is over.
    fn exhausted(&self, now: Instant, tries: u32) -> bool {
        self.sent >= tries && now >= self.next_at
    }

    /// The answer to this probe from `server`, if `packet` is it.
    fn answer(&self, packet: &Receive<'_>, server: SocketAddr) -> Option<BindingResponse> {
        if packet.local != self.local || packet.source != server {
            return None;
        }
        BindingResponse::decode(packet.payload)
            .ok()
            .flatten()
            .filter(|r| r.transaction_id == self.id)
    }
}

/// The port refresh: a Binding from a fresh port that reads the NAT's current port before we
/// predict the next.
#[derive(Debug)]
struct Refresh {
    probe: Probe,
    mapped: Option<SocketAddr>,
}

/// FogConnect on one UDP socket (see the module docs).
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    discovery: Option<Discovery>,
    report: Option<Report>,
    client: Client,
    sessions: Vec<Session>,
    pending: Vec<PendingConnect>,
    /// Offers that arrived before discovery finished.
    deferred_offers: Vec<(SessionId, PeerId, Description)>,
    refresh: Option<Refresh>,
    next_refresh_port: u16,
    rng: u64,
    events: VecDeque<Event>,
    /// The TURN client, once the signaling server handed out credentials.
    turn: Option<TurnClient>,
    relay_requested: bool,
    relayed: Option<SocketAddr>,
    /// Application datagrams to send on a UDP path: (from, to, bytes with the framing byte).
    outgoing: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// When the node was made: its first timeout, which starts discovery.
    created: Instant,
    started: bool,
    /// Our further sockets (see [`NodeConfig::interfaces`]).
    hosts: Vec<SocketAddr>,
    /// Further addresses whose socket could not be bound, left out while still listed.
    refused: Vec<IpAddr>,
    socket_requests: VecDeque<SocketRequest>,
    /// The keepalive Binding from the base, once discovery is done.
    watch: Option<Probe>,
    /// Measuring the servers' RTTs before discovery, with alternatives configured.
    ranker: Option<Ranker>,
    /// TURN credentials that came while the servers were being measured.
    pending_relay: Option<(String, String)>,
}

/// Retransmission interval of the port refresh, and its tries.
const REFRESH_RTO: Duration = Duration::from_millis(250);
const REFRESH_TRIES: u32 = 5;
/// Retransmission interval of the keepalive Binding, and its tries per round.
const WATCH_RTO: Duration = Duration::from_millis(500);
const WATCH_TRIES: u32 = 4;

impl Node {
    /// A node; discovery starts at its first [`handle_timeout`](SansIo::handle_timeout), which
    /// [`poll_timeout`](SansIo::poll_timeout) asks for at `now`.
    pub fn new(config: NodeConfig, now: Instant) -> Node {
        let discovery_config = discovery_config(&config);
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&config.seed.to_le_bytes());
        seed[8] = 0x51;
        let mut client_config = ClientConfig::new(config.key.clone(), config.realm.clone(), seed);
        client_config.alias = config.alias.clone();
        let ports = discovery_config.local_ports();
        let next_refresh_port = ports
            .iter()
            .max()
            .copied()
            .unwrap_or(config.base.port())
            .wrapping_add(1);
        let ranker = (!config.alternatives.is_empty()).then(|| {
            let servers = std::iter::once(config.stun)
                .chain(config.alternatives.iter().map(|a| a.stun))
                .collect();
            Ranker::new(RankConfig::new(config.base, config.seed), servers, now)
        });
        Node {
            discovery: ranker.is_none().then(|| Discovery::new(discovery_config)),
            ranker,
            pending_relay: None,
            report: None,
            client: Client::new(client_config),
            sessions: Vec::new(),
            pending: Vec::new(),
            deferred_offers: Vec::new(),
            refresh: None,
            next_refresh_port,
            rng: config.seed ^ 0x6e6f_6465,
            events: VecDeque::new(),
            turn: None,
            relay_requested: false,
            relayed: None,
            outgoing: VecDeque::new(),
            created: now,
            started: false,
            hosts: Vec::new(),
            refused: Vec::new(),
            socket_requests: VecDeque::new(),
            watch: None,
            config,
        }
        .with_interfaces(now)
    }

    fn with_interfaces(mut self, now: Instant) -> Node {
        let interfaces = std::mem::take(&mut self.config.interfaces);
        self.set_interfaces(now, &interfaces);
        // Nobody to tell yet.
        self.events.clear();
        self
    }

    /// The ranking is done: use the chosen servers, start discovery, and allocate on the
    /// chosen relay if credentials came meanwhile.
    fn drain_ranker(&mut self, now: Instant) {
        let Some(ranker) = &mut self.ranker else {
            return;
        };
        let Some(rank::Event::Done(ranking)) = ranker.poll_event() else {
            return;
        };
        self.ranker = None;
        // None answered: the configured server, whose discovery reports what it finds.
        if let Some(i) = ranking.choice().filter(|&i| i > 0) {
            let chosen = self.config.alternatives[i - 1];
            self.config.stun = chosen.stun;
            self.config.turn = chosen.turn;
        }
        self.events.push_back(Event::ServerChosen {
            stun: self.config.stun,
            turn: self.config.turn,
            rtts: ranking.servers,
        });
        self.discovery = Some(Discovery::new(discovery_config(&self.config)));
        if let Some((username, password)) = self.pending_relay.take() {
            self.allocate(now, username, password);
        }
        // Only the chosen server has a relay: ask for credentials now (signaling may have
        // come up while the servers were measured).
        if self.config.turn.is_some() && !self.relay_requested && self.client.is_authenticated() {
            self.relay_requested = self.client.request_relay().is_ok();
        }
    }

    /// Allocates on the TURN server with credentials from signaling.
    fn allocate(&mut self, now: Instant, username: String, password: String) {
        if self.ranker.is_some() {
            self.pending_relay = Some((username, password));
            return;
        }
        if let (Some(server), None) = (self.config.turn, &self.turn) {
            let mut config = TurnConfig::new(server, username, password, self.next_random());
            config.source = Some(self.config.base);
            let mut turn = TurnClient::new(config);
            if turn.allocate(now).is_ok() {
                self.turn = Some(turn);
            }
        }
    }

    /// Our further interface addresses are now `addresses` (the base's own is ignored): new
    /// ones get a socket at the base's port and become host candidates, trickled to the peer
    /// of every session and checked at once; gone ones are unbound, and a connection whose
    /// path used one moves to another path without waiting for consent to lapse. Reported as
    /// [`Event::CandidatesChanged`].
    pub fn set_interfaces(&mut self, now: Instant, addresses: &[IpAddr]) {
        let port = self.config.base.port();
        self.refused.retain(|ip| addresses.contains(ip));
        let wanted: Vec<SocketAddr> = addresses
            .iter()
            .filter(|ip| **ip != self.config.base.ip() && !ip.is_unspecified())
            .filter(|ip| !self.refused.contains(ip))
            .map(|ip| SocketAddr::new(*ip, port))
            .collect();
        let removed: Vec<SocketAddr> = self
            .hosts
            .iter()
            .filter(|h| !wanted.contains(h))
            .copied()
            .collect();
        let mut added = Vec::new();
        for host in wanted {
            if !self.hosts.contains(&host) && !added.contains(&host) {
                added.push(host);
            }
        }
        for &gone in &removed {
            self.hosts.retain(|h| *h != gone);
            self.socket_requests.push_back(SocketRequest::Unbind(gone));
            for s in &mut self.sessions {
                if let Some(agent) = &mut s.agent {
                    agent.remove_local(now, gone);
                }
            }
        }
        for &host in &added {
            self.hosts.push(host);
            self.socket_requests.push_back(SocketRequest::Bind(host));
            for s in &mut self.sessions {
                if let Some(agent) = &mut s.agent {
                    agent.add_local(now, host);
                }
            }
        }
        let added: Vec<ice_candidate::Candidate> = if self.config.direct {
            added
                .into_iter()
                .map(|a| ice_candidate::Candidate::new(Kind::Host, a))
                .collect()
        } else {
            Vec::new()
        };
        self.changed(added, removed);
        self.drain_agents();
    }

    /// Checks the base socket's mapping now rather than at the next keepalive (after a network
    /// change the application noticed, say); a new server-reflexive address is reported as
    /// [`Event::CandidatesChanged`] and trickled.
    pub fn regather(&mut self, now: Instant) {
        if self.report.is_some() {
            self.watch_from(now);
        }
    }

    /// Reports changed candidates and trickles the new ones to every session's peer.
    fn changed(&mut self, added: Vec<ice_candidate::Candidate>, removed: Vec<SocketAddr>) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        for s in &mut self.sessions {
            let Some(session) = s.id else {
                // An offer still on its way: what went away is not worth telling.
                s.untrickled.retain(|c| !removed.contains(&c.addr));
                s.untrickled.extend(added.iter().copied());
                continue;
            };
            for c in &added {
                // A session the server forgot refuses it; its peer keeps the old candidates.
                let _ = self.client.trickle(session, Some(to_wire(c)));
            }
        }
        self.events
            .push_back(Event::CandidatesChanged { added, removed });
    }

    /// Sends the keepalive Binding at `at` (a new transaction).
    fn watch_from(&mut self, at: Instant) {
        self.watch = Some(self.probe(self.config.base, at, *b"keep"));
    }

    /// The keepalive's answer: a mapped address that is not the one we describe is a new
    /// server-reflexive candidate.
    fn handle_watch_answer(&mut self, now: Instant, packet: &Receive<'_>) -> bool {
        let Some(response) = self
            .watch
            .as_ref()
            .and_then(|w| w.answer(packet, self.config.stun))
        else {
            return false;
        };
        // The next one, a keepalive interval from this answer.
        self.watch_from(now + self.config.keepalive);
        let mapped = response.mapped_address();
        let old = self.report.as_ref().and_then(|r| r.mapped);
        if let (Some(new), Some(report)) = (mapped, &mut self.report) {
            if old != Some(new) && self.config.direct {
                report.mapped = Some(new);
                let added = vec![ice_candidate::Candidate::new(Kind::ServerReflexive, new)];
                self.changed(added, old.into_iter().collect());
            }
        }
        true
    }

    /// This node's peer ID.
    pub fn peer_id(&self) -> PeerId {
        self.config.key.peer_id()
    }

    /// The discovery report, once discovery finished.
    pub fn report(&self) -> Option<&Report> {
        self.report.as_ref()
    }

    /// Whether the signaling server accepted us.
    pub fn signaling_up(&self) -> bool {
        self.client.is_authenticated()
    }

    /// Connect to `peer` for `service`. Progress comes as events; [`Event::Connected`] when a
    /// direct path is verified.
    pub fn connect(&mut self, now: Instant, peer: PeerId, service: u16) {
        self.pending.push(PendingConnect { peer, service });
        self.progress(now);
    }

    /// Asks the signaling server who `name` (an alias or a peer ID) is; the answer comes as
    /// [`Event::LookupResult`].
    pub fn lookup(&mut self, name: &str) {
        if self.client.lookup(name).is_err() {
            self.events.push_back(Event::Error {
                session: None,
                message: "lookup before the signaling server accepted us".into(),
            });
        }
    }

    /// Sends one datagram to the peer of `session` on its current path (unreliable, unordered,
    /// at most [`MAX_DATAGRAM`] bytes): what the transports will build on.
    pub fn send(&mut self, session: SessionId, data: &[u8]) -> Result<(), SendError> {
        if data.len() > MAX_DATAGRAM {
            return Err(SendError::TooLong);
        }
        let s = self
            .sessions
            .iter()
            .find(|s| s.id == Some(session))
            .ok_or(SendError::UnknownSession)?;
        if let Some((local, remote)) = s.agent.as_ref().and_then(Agent::data_path) {
            let mut bytes = Vec::with_capacity(data.len() + 1);
            bytes.push(DATA);
            bytes.extend_from_slice(data);
            self.outgoing.push_back((local, remote, bytes));
            return Ok(());
        }
        if s.signal_relay.is_some() && s.connected {
            let mut bytes = Vec::with_capacity(data.len() + 1);
            bytes.push(RELAY_DATA);
            bytes.extend_from_slice(data);
            return self
                .client
                .relay(session, &bytes)
                .map_err(|_| SendError::NotConnected);
        }
        Err(SendError::NotConnected)
    }

    /// An application datagram that arrived on `(local, source)`: delivered if it is a path of
    /// a session. Whether it was one (and so taken).
    fn deliver(&mut self, local: SocketAddr, source: SocketAddr, payload: &[u8]) -> bool {
        if payload.first() != Some(&DATA) {
            return false;
        }
        let session = self.sessions.iter().find_map(|s| {
            s.agent
                .as_ref()
                .filter(|a| a.has_path(local, source))
                .and(s.id)
        });
        if let Some(session) = session {
            self.events.push_back(Event::Data {
                session,
                data: payload[1..].to_vec(),
            });
        }
        true
    }

    // ---- signaling, driven by whatever carries the frames ----

    /// The signaling connection opened.
    pub fn handle_signal_open(&mut self, now: Instant) {
        self.client.handle_connected(now);
        self.progress(now);
    }

    /// A frame from the signaling server.
    pub fn handle_signal_frame(&mut self, now: Instant, frame: &str) {
        self.client.handle_frame(now, frame);
        self.progress(now);
    }

    /// The signaling connection closed.
    pub fn handle_signal_closed(&mut self, now: Instant) {
        // A new connection starts over with a new client handshake.
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&self.next_random().to_le_bytes());
        let mut config =
            ClientConfig::new(self.config.key.clone(), self.config.realm.clone(), seed);
        config.alias = self.config.alias.clone();
        self.client = Client::new(config);
        self.progress(now);
    }

    /// The next frame for the signaling server.
    pub fn poll_signal_frame(&mut self) -> Option<String> {
        self.client.poll_frame()
    }

    fn next_random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn credentials(&mut self) -> agent::Credentials {
        const ICE_CHARS: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut text = String::with_capacity(32);
        while text.len() < 32 {
            let r = self.next_random();
            for i in 0..8 {
                text.push(char::from(ICE_CHARS[((r >> (i * 6)) & 63) as usize]));
            }
        }
        agent::Credentials {
            ufrag: text[..8].to_owned(),
            pwd: text[8..32].to_owned(),
        }
    }

    /// Our behaviour, once known.
    fn behaviour(&self) -> Option<Behaviour> {
        self.report.as_ref().map(|r| r.behaviour)
    }

    /// Whether our next mapping must be predicted from a fresh reading of the NAT's port.
    fn needs_refresh(&self) -> bool {
        matches!(
            self.behaviour(),
            Some(Behaviour::Nat {
                mapping: Mapping::AddressDependent | Mapping::AddressAndPortDependent,
                ports: PortPattern::Sequential { .. },
                ..
            })
        )
    }

    /// Moves everything forward that waits on something: signaling events, pending connects,
    /// deferred offers, agents' punch instants.
    fn progress(&mut self, now: Instant) {
        while let Some(event) = self.client.poll_event() {
            self.handle_signal_event(now, event);
        }
        if self.report.is_none() || !self.client.is_authenticated() {
            return;
        }
        let fresh = self.refresh.as_ref().and_then(|r| r.mapped);
        if (!self.pending.is_empty() || !self.deferred_offers.is_empty())
            && self.needs_refresh()
            && fresh.is_none()
        {
            if self.refresh.is_none() {
                self.start_refresh(now);
            }
            return;
        }
        for pending in std::mem::take(&mut self.pending) {
            self.send_offer(pending);
        }
        for (session, from, description) in std::mem::take(&mut self.deferred_offers) {
            self.answer_offer(now, session, from, description);
        }
        // A refresh serves the offers and answers made from it only.
        if fresh.is_some() {
            self.refresh = None;
        }
        while let Some(event) = self.client.poll_event() {
            self.handle_signal_event(now, event);
        }
    }

    fn start_refresh(&mut self, now: Instant) {
        let local = SocketAddr::new(self.config.base.ip(), self.next_refresh_port);
        self.next_refresh_port = self.next_refresh_port.wrapping_add(1).max(1024);
        self.refresh = Some(Refresh {
            probe: self.probe(local, now, *b"\0\0\0\0"),
            mapped: None,
        });
    }

    /// A new Binding probe from `local`, first due at `at`; `tag` ends its transaction ID.
    fn probe(&mut self, local: SocketAddr, at: Instant, tag: [u8; 4]) -> Probe {
        let mut id = [0u8; 12];
        id[..8].copy_from_slice(&self.next_random().to_le_bytes());
        id[8..].copy_from_slice(&tag);
        Probe {
            id: TransactionId::new(id),
            local,
            next_at: at,
            sent: 0,
        }
    }

    /// Our description: host, server-reflexive, predicted and relayed candidates of the base
    /// socket (only the relayed one when direct paths are off).
    fn description(&mut self, credentials: &agent::Credentials, service: u16) -> Description {
        let base = self.config.base;
        let mut candidates = Vec::new();
        if self.config.direct {
            // The server-reflexive address even when it is the host's own (no NAT, or a
            // firewall): the peer's plan checks server-reflexive candidates, and may skip host
            // ones.
            if let Some(mapped) = self.report.as_ref().and_then(|r| r.mapped) {
                candidates.push(ice_candidate::Candidate::new(Kind::ServerReflexive, mapped));
            }
            if !candidates.iter().any(|c| c.addr == base) {
                candidates.push(ice_candidate::Candidate::new(Kind::Host, base));
            }
            for &host in &self.hosts {
                candidates.push(ice_candidate::Candidate::new(Kind::Host, host));
            }
            if let (
                Some(Behaviour::Nat {
                    ports: PortPattern::Sequential { delta },
                    ..
                }),
                Some(last),
            ) = (
                self.behaviour(),
                self.refresh.as_ref().and_then(|r| r.mapped),
            ) {
                for addr in ice_candidate::predicted(last, delta, 3) {
                    candidates.push(ice_candidate::Candidate::new(Kind::Predicted, addr));
                }
            }
        }
        if let Some(relayed) = self.relayed {
            candidates.push(ice_candidate::Candidate::new(Kind::Relayed, relayed));
        }
        Description {
            candidates: candidates.iter().map(to_wire).collect(),
            nat: self.behaviour().map(Into::into),
            transports: self.config.transports.clone(),
            credentials: msg::Credentials {
                ufrag: credentials.ufrag.clone(),
                pwd: credentials.pwd.clone(),
            },
            service,
        }
    }

    fn send_offer(&mut self, pending: PendingConnect) {
        let credentials = self.credentials();
        let description = self.description(&credentials, pending.service);
        match self.client.connect(pending.peer, description) {
            Ok(request) => self.sessions.push(Session {
                request: Some(request),
                ..Session::new(pending.peer, true, credentials)
            }),
            Err(e) => self.events.push_back(Event::Error {
                session: None,
                message: format!("connect: {e:?}"),
            }),
        }
    }

    fn answer_offer(&mut self, now: Instant, session: SessionId, from: PeerId, offer: Description) {
        let credentials = self.credentials();
        let description = self.description(&credentials, offer.service);
        if let Err(e) = self.client.answer(session, description) {
            self.events.push_back(Event::Error {
                session: Some(session),
                message: format!("answer: {e:?}"),
            });
            return;
        }
        let mut s = Session {
            id: Some(session),
            remote: Some(offer),
            ..Session::new(from, false, credentials)
        };
        self.build_agent(now, &mut s);
        self.sessions.push(s);
    }

    /// The agent of a session whose two descriptions are known.
    fn build_agent(&mut self, now: Instant, session: &mut Session) {
        let Some(remote) = &session.remote else {
            return;
        };
        let mine = self.behaviour().unwrap_or(Behaviour::UdpBlocked);
        let theirs = remote.nat.map_or(Behaviour::UdpBlocked, Into::into);
        let (a, b, me) = if session.offerer {
            (mine, theirs, Who::A)
        } else {
            (theirs, mine, Who::B)
        };
        let mut plan = Plan::new(a, b, me, &self.config.strategy);
        if !self.config.direct {
            plan = plan.relay_only();
        }
        // No UDP on one side: the signaling server carries the datagrams.
        if (a == Behaviour::UdpBlocked || b == Behaviour::UdpBlocked) && session.id.is_some() {
            session.signal_relay = Some(SignalRelay {
                probe_sent: None,
                next_probe: now,
            });
        }
        let remote_credentials = agent::Credentials {
            ufrag: remote.credentials.ufrag.clone(),
            pwd: remote.credentials.pwd.clone(),
        };
        let mut config = AgentConfig::new(
            session.credentials.clone(),
            remote_credentials,
            session.offerer,
            self.config.base,
            plan,
            self.next_random(),
        );
        config.hosts = self.hosts.clone();
        let mut agent = Agent::new(config);
        for c in &remote.candidates {
            agent.add_remote(now, from_wire(c));
        }
        // Punch at once: the answerer opens its NAT quietly (low TTL) as it answers, the
        // offerer checks in full as the answer arrives, so the offerer's first check finds the
        // answerer's NAT open and no NAT sees unsolicited input. At the instant the server's
        // punch sync names, the answerer speaks up in full (see `Agent::set_quiet`).
        agent.set_quiet(!session.offerer && session.punch_at.is_none());
        agent.start(now);
        if let Some(relayed) = self.relayed {
            agent.set_relayed(now, relayed);
            if let Some(turn) = &mut self.turn {
                for peer in agent.relay_peers() {
                    let _ = turn.create_permission(now, peer.ip());
                }
            }
        }
        session.agent = Some(agent);
    }

    fn handle_signal_event(&mut self, now: Instant, event: SignalEvent) {
        match event {
            SignalEvent::Authenticated { .. } => {
                self.events.push_back(Event::SignalingUp);
                if self.config.turn.is_some() && !self.relay_requested {
                    self.relay_requested = self.client.request_relay().is_ok();
                }
            }
            SignalEvent::RelayCredentials {
                username, password, ..
            } => self.allocate(now, username, password),
            SignalEvent::LookupResult { peer, online, .. } => {
                self.events.push_back(Event::LookupResult { peer, online });
            }
            SignalEvent::OfferSent { request, session } => {
                if let Some(s) = self
                    .sessions
                    .iter_mut()
                    .find(|s| s.request == Some(request))
                {
                    s.id = Some(session);
                    s.request = None;
                    for c in std::mem::take(&mut s.untrickled) {
                        let _ = self.client.trickle(session, Some(to_wire(&c)));
                    }
                }
            }
            SignalEvent::Offer {
                session,
                from,
                description,
            } => {
                if self.report.is_some() && !self.needs_refresh() {
                    self.answer_offer(now, session, from, description);
                } else {
                    self.deferred_offers.push((session, from, description));
                    if self.report.is_some() && self.refresh.is_none() {
                        self.start_refresh(now);
                    }
                }
            }
            SignalEvent::Answer {
                session,
                description,
                ..
            } => {
                if let Some(i) = self.sessions.iter().position(|s| s.id == Some(session)) {
                    let mut s = self.sessions.swap_remove(i);
                    s.remote = Some(description);
                    self.build_agent(now, &mut s);
                    self.sessions.push(s);
                }
            }
            SignalEvent::Candidate {
                session,
                candidate: Some(candidate),
            } => {
                if let Some(s) = self.sessions.iter_mut().find(|s| s.id == Some(session)) {
                    if let Some(remote) = &mut s.remote {
                        remote.candidates.push(candidate);
                    }
                    if let Some(agent) = &mut s.agent {
                        agent.add_remote(now, from_wire(&candidate));
                    }
                }
                self.relay_permissions(now);
            }
            SignalEvent::Relay { session, data } => {
                let Some(s) = self.sessions.iter_mut().find(|s| s.id == Some(session)) else {
                    return;
                };
                match data.first() {
                    Some(&RELAY_PROBE) => {
                        let mut echo = data.clone();
                        echo[0] = RELAY_ECHO;
                        let _ = self.client.relay(session, &echo);
                    }
                    Some(&RELAY_DATA) if s.connected => {
                        self.events.push_back(Event::Data {
                            session,
                            data: data[1..].to_vec(),
                        });
                    }
                    Some(&RELAY_ECHO) => {
                        let Some(relay) = &mut s.signal_relay else {
                            return;
                        };
                        let Some(sent) = relay.probe_sent.take() else {
                            return;
                        };
                        if !s.connected {
                            s.connected = true;
                            self.events.push_back(Event::Connected {
                                session,
                                peer: s.peer,
                                local: UNSPECIFIED,
                                remote: UNSPECIFIED,
                                rtt: now.saturating_duration_since(sent),
                                via: Via::Signaling,
                            });
                        }
                    }
                    _ => {}
                }
            }
            SignalEvent::PunchAt { session, at } => {
                if let Some(s) = self.sessions.iter_mut().find(|s| s.id == Some(session)) {
                    s.punch_at = Some(at);
                    if let Some(agent) = &mut s.agent {
                        agent.start(now);
                        if !s.offerer {
                            s.quiet_until = Some(at);
                        }
                    }
                }
            }
            SignalEvent::Error {
                request, message, ..
            } => {
                let session = request.and_then(|r| {
                    let s = self.sessions.iter_mut().find(|s| s.request == Some(r))?;
                    // A refused offer gets no session: nothing to trickle to, ever.
                    s.untrickled.clear();
                    s.id
                });
                self.events.push_back(Event::Error { session, message });
            }
            SignalEvent::SessionClosed { session, reason } => {
                if let Some(s) = self.sessions.iter().find(|s| s.id == Some(session)) {
                    if !s.connected {
                        self.events.push_back(Event::Error {
                            session: Some(session),
                            message: format!("the session closed: {reason}"),
                        });
                    }
                }
            }
            _ => {}
        }
    }

    fn drain_agents(&mut self) {
        for s in &mut self.sessions {
            let Some(agent) = &mut s.agent else { continue };
            while let Some(event) = agent.poll_event() {
                let Some(session) = s.id else { continue };
                match event {
                    agent::Event::Selected {
                        local,
                        remote,
                        rtt,
                        relayed,
                    } => {
                        let via = if relayed { Via::Turn } else { Via::Direct };
                        if s.connected {
                            self.events.push_back(Event::PathChanged {
                                session,
                                local,
                                remote,
                                rtt,
                                via,
                            });
                        } else {
                            s.connected = true;
                            self.events.push_back(Event::Connected {
                                session,
                                peer: s.peer,
                                local,
                                remote,
                                rtt,
                                via,
                            });
                        }
                    }
                    agent::Event::GaveUp => self.events.push_back(Event::DirectFailed {
                        session,
                        peer: s.peer,
                    }),
                    agent::Event::PathLost { .. } => {
                        self.events.push_back(Event::PathLost { session });
                    }
                    agent::Event::Validated { .. } => {}
                }
            }
        }
    }

    fn handle_refresh_answer(&mut self, now: Instant, packet: &Receive<'_>) -> bool {
        let Some(refresh) = &mut self.refresh else {
            return false;
        };
        let Some(response) = refresh.probe.answer(packet, self.config.stun) else {
            return false;
        };
        refresh.mapped = response.mapped_address();
        self.progress(now);
        true
    }
}

/// Discovery from the base port against the configured STUN server.
fn discovery_config(config: &NodeConfig) -> DiscoveryConfig {
    let mut d = DiscoveryConfig::new(config.stun, config.seed);
    d.first_port = config.base.port();
    d.local_ip = config.base.ip();
    d.port_samples = config.port_samples;
    d.hairpinning = config.hairpinning;
    d
}

fn to_wire(c: &ice_candidate::Candidate) -> msg::Candidate {
    msg::Candidate {
        kind: match c.kind {
            Kind::Host => CandidateKind::Host,
            Kind::ServerReflexive => CandidateKind::Srflx,
            Kind::PeerReflexive => CandidateKind::Prflx,
            Kind::Predicted => CandidateKind::Predicted,
            Kind::Relayed => CandidateKind::Relay,
        },
        addr: c.addr,
        priority: c.priority,
        related: None,
    }
}

fn from_wire(c: &msg::Candidate) -> ice_candidate::Candidate {
    ice_candidate::Candidate {
        kind: match c.kind {
            CandidateKind::Host => Kind::Host,
            CandidateKind::Srflx => Kind::ServerReflexive,
            CandidateKind::Prflx => Kind::PeerReflexive,
            CandidateKind::Predicted => Kind::Predicted,
            CandidateKind::Relay => Kind::Relayed,
        },
        addr: c.addr,
        priority: c.priority,
    }
}

impl Node {
    /// Hands the TURN client's events on: the allocation to the agents, relayed data to the
    /// agent it is for.
    fn drain_turn(&mut self, now: Instant) {
        let Some(turn) = &mut self.turn else {
            return;
        };
        let mut events = Vec::new();
        while let Some(event) = turn.poll_event() {
            events.push(event);
        }
        for event in events {
            match event {
                TurnEvent::Allocated { relayed, .. } => {
                    self.relayed = Some(relayed);
                    self.events.push_back(Event::RelayReady { relayed });
                    let candidate = to_wire(&ice_candidate::Candidate::new(Kind::Relayed, relayed));
                    for s in &mut self.sessions {
                        if let Some(agent) = &mut s.agent {
                            agent.set_relayed(now, relayed);
                        }
                        // Sessions that described themselves before the relay existed learn
                        // it now (trickle), or once the server names the session.
                        match s.id {
                            Some(session) => {
                                let _ = self.client.trickle(session, Some(candidate));
                            }
                            None => s
                                .untrickled
                                .push(ice_candidate::Candidate::new(Kind::Relayed, relayed)),
                        }
                    }
                    self.relay_permissions(now);
                }
                TurnEvent::Data { peer, data, .. } => {
                    let Some(relayed) = self.relayed else {
                        continue;
                    };
                    if self.deliver(relayed, peer, &data) {
                        continue;
                    }
                    let packet = Receive {
                        source: peer,
                        local: relayed,
                        payload: &data,
                    };
                    for s in &mut self.sessions {
                        if let Some(agent) = &mut s.agent {
                            if agent.owns(&packet) {
                                agent.handle_packet(now, packet);
                                break;
                            }
                        }
                    }
                    self.relay_permissions(now);
                    self.drain_agents();
                }
                _ => {}
            }
        }
    }

    /// Permissions on our allocation for every peer address a relay pair talks to.
    /// Called after every datagram an agent took (it may have learnt a peer-reflexive
    /// address), so it allocates nothing; `create_permission` is a lookup for a known IP.
    fn relay_permissions(&mut self, now: Instant) {
        let Some(turn) = &mut self.turn else {
            return;
        };
        for s in &self.sessions {
            if let Some(agent) = &s.agent {
                for peer in agent.relay_peers() {
                    let _ = turn.create_permission(now, peer.ip());
                }
            }
        }
    }

    /// Hands discovery's events on; once it is done the machine goes.
    fn drain_discovery(&mut self, now: Instant) {
        let Some(discovery) = &mut self.discovery else {
            return;
        };
        while let Some(event) = discovery.poll_event() {
            if let discovery::Event::Done(report) = event {
                self.events.push_back(Event::Ready {
                    behaviour: report.behaviour,
                    public: report.mapped,
                });
                self.report = Some(report);
            }
        }
        if self.report.is_some() {
            self.discovery = None;
            self.watch_from(now + self.config.keepalive);
            self.progress(now);
        }
    }
}

impl SansIo for Node {
    type Event = Event;

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        // The TURN client first: it shares the base port with discovery, and takes only its
        // server's answers to its own requests and the data the relay delivers.
        if let Some(turn) = &mut self.turn {
            if turn.accepts(&packet) {
                turn.handle_packet(now, packet);
                self.drain_turn(now);
                return;
            }
        }
        if let Some(ranker) = &mut self.ranker {
            if ranker.accepts(&packet) {
                ranker.handle_packet(now, packet);
                self.drain_ranker(now);
                return;
            }
        }
        if let Some(discovery) = &mut self.discovery {
            if discovery.accepts(&packet) {
                discovery.handle_packet(now, packet);
                self.drain_discovery(now);
                return;
            }
        }
        if self.handle_refresh_answer(now, &packet) || self.handle_watch_answer(now, &packet) {
            return;
        }
        if self.deliver(packet.local, packet.source, packet.payload) {
            return;
        }
        for s in &mut self.sessions {
            if let Some(agent) = &mut s.agent {
                if agent.owns(&packet) {
                    agent.handle_packet(now, packet);
                    self.relay_permissions(now);
                    self.drain_agents();
                    return;
                }
            }
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.started = true;
        self.client.handle_timeout(now);
        if let Some(turn) = &mut self.turn {
            turn.handle_timeout(now);
        }
        self.drain_turn(now);
        if let Some(ranker) = &mut self.ranker {
            ranker.handle_timeout(now);
        }
        self.drain_ranker(now);
        if let Some(discovery) = &mut self.discovery {
            discovery.handle_timeout(now);
        }
        self.drain_discovery(now);
        if let Some(refresh) = &mut self.refresh {
            if refresh.mapped.is_none() && refresh.probe.exhausted(now, REFRESH_TRIES) {
                // No answer: predict from the discovery report's address instead.
                refresh.mapped = self
                    .report
                    .as_ref()
                    .and_then(|r| r.mapped)
                    .or(Some(self.config.base));
            }
        }
        for s in &mut self.sessions {
            if let (Some(relay), Some(session)) = (&mut s.signal_relay, s.id) {
                if now >= relay.next_probe {
                    // Without an authenticated connection the probe waits for the next turn.
                    relay.next_probe = now + SIGNAL_RELAY_KEEPALIVE;
                    if self.client.relay(session, &[RELAY_PROBE]).is_ok() {
                        relay.probe_sent = Some(now);
                    }
                }
            }
            if let Some(agent) = &mut s.agent {
                if s.quiet_until.is_some_and(|t| now >= t) {
                    s.quiet_until = None;
                    agent.set_quiet(false);
                }
                agent.handle_timeout(now);
            }
        }
        self.drain_agents();
        self.progress(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(ranker) = &mut self.ranker {
            if let Some(t) = ranker.poll_transmit(now, buf) {
                return Some(t);
            }
        }
        if let Some(discovery) = &mut self.discovery {
            let transmit = discovery.poll_transmit(now, buf);
            self.drain_discovery(now);
            if transmit.is_some() {
                return transmit;
            }
        }
        let stun = self.config.stun;
        if let Some(refresh) = self.refresh.as_mut().filter(|r| r.mapped.is_none()) {
            if let Some(t) = refresh
                .probe
                .poll(now, buf, stun, REFRESH_RTO, REFRESH_TRIES)
            {
                return Some(t);
            }
        }
        if self
            .watch
            .as_ref()
            .is_some_and(|w| w.exhausted(now, WATCH_TRIES))
        {
            // No answer this round (the server may be down): the next round later.
            self.watch_from(now + self.config.keepalive);
        }
        if let Some(watch) = &mut self.watch {
            if let Some(t) = watch.poll(now, buf, stun, WATCH_RTO, WATCH_TRIES) {
                return Some(t);
            }
        }
        while let Some((local, remote, bytes)) = self.outgoing.pop_front() {
            match (self.relayed, &mut self.turn) {
                (Some(relayed), Some(turn)) if local == relayed => {
                    let _ = turn.create_permission(now, remote.ip());
                    let _ = turn.send_to(now, remote, &bytes);
                }
                _ => {
                    let len = bytes.len().min(buf.len());
                    buf[..len].copy_from_slice(&bytes[..len]);
                    return Some(Transmit::new(remote, len).from_source(local));
                }
            }
        }
        // What the agents send from our relayed address goes through the TURN client.
        for s in &mut self.sessions {
            let Some(agent) = &mut s.agent else { continue };
            while let Some(t) = agent.poll_transmit(now, buf) {
                match (self.relayed, &mut self.turn) {
                    (Some(relayed), Some(turn)) if t.source == Some(relayed) => {
                        let _ = turn.create_permission(now, t.destination.ip());
                        let _ = turn.send_to(now, t.destination, &buf[..t.len]);
                    }
                    _ => return Some(t),
                }
            }
        }
        if let Some(turn) = &mut self.turn {
            if let Some(t) = turn.poll_transmit(now, buf) {
                return Some(t);
            }
            self.drain_turn(now);
        }
        None
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.drain_agents();
        self.events.pop_front()
    }

    fn poll_socket_request(&mut self) -> Option<SocketRequest> {
        self.socket_requests.pop_front()
    }

    /// A further interface's socket could not be bound (another process has the port on that
    /// address): the address is not used, and is reported as removed in
    /// [`Event::CandidatesChanged`]. Not an error for the node: it works on without it. A peer
    /// that was already told of it keeps checking it in vain (signaling has no way to take a
    /// candidate back) until its round ends.
    fn handle_bind_error(&mut self, now: Instant, addr: SocketAddr) {
        if !self.hosts.contains(&addr) {
            return;
        }
        // Not offered again while the caller keeps listing it (a gatherer that reads the
        // interfaces every few seconds would otherwise add and remove it each time).
        self.refused.push(addr.ip());
        // The addresses still wanted: the other hosts, and every refused one (so that the
        // call keeps them refused).
        let keep: Vec<IpAddr> = self
            .hosts
            .iter()
            .filter(|h| **h != addr)
            .map(SocketAddr::ip)
            .chain(self.refused.iter().copied())
            .collect();
        self.set_interfaces(now, &keep);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if !self.started {
            return Some(self.created);
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        consider(self.client.poll_timeout());
        if let Some(turn) = &self.turn {
            consider(turn.poll_timeout());
        }
        if let Some(d) = &self.discovery {
            consider(d.poll_timeout());
        }
        if let Some(r) = &self.ranker {
            consider(r.poll_timeout());
        }
        if let Some(r) = &self.refresh {
            if r.mapped.is_none() {
                consider(Some(r.probe.next_at));
            }
        }
        consider(self.watch.as_ref().map(|w| w.next_at));
        for s in &self.sessions {
            if let Some(agent) = &s.agent {
                consider(agent.poll_timeout());
            }
            consider(s.quiet_until);
            consider(s.signal_relay.map(|r| r.next_probe));
        }
        next
    }
}
