//! The node: one UDP socket's worth of FogConnect, sans-IO.
//!
//! A [`Node`] owns every machine a peer needs and is itself one machine for the driver:
//! - fog-stun's RFC 5780 [`Discovery`] at start, from the node's base port (so that the report's
//!   mapped address is the base socket's server-reflexive address);
//! - fog-signal's [`Client`] over whatever carries its text frames (a WebSocket in fog-mio's
//!   world, fog-sim's reliable channel in the simulator), through [`Node::handle_signal`] and
//!   [`Node::poll_signal`], drained between the transmits and the events;
//! - one fog-ice [`Agent`] per connection, built from both sides' descriptions and NAT
//!   behaviours, started at the instant the signaling server chose (punch sync).
//!
//! Connections are handles ([`ConnectionId`]): [`Node::connect`] gives one at once, an offer
//! from a peer arrives as [`Event::Incoming`] with one, and every later event about the
//! connection carries it, up to its end, which is always reported: [`Event::Failed`] for one
//! that never had a path, [`Event::Closed`] for one that had. Ending releases everything the
//! connection held (its agent, birthday sockets, relay permissions, timers).
//!
//! Candidates are kept fresh: [`Node::set_interfaces`] brings the host candidates of further
//! interface addresses (IPv4 and IPv6) in and out, and a Binding to the STUN server from the
//! base every [`NodeConfig::keepalive`] keeps the NAT's mapping and notices when it changes
//! ([`Node::regather`] does it at once). Every change is reported as
//! [`Event::CandidatesChanged`] and trickled to the peers of every connection.

mod candidates;
mod config;
mod conn;
mod event;
mod ledger;
mod linger;
mod portmap;
mod probe;
mod quic;
mod relay;
mod rtc;
pub mod seal;
mod signal;
mod transport;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::nat::{Behaviour, Mapping, PortPattern};
use fog_core::pairing::Who;
use fog_core::{Receive, SansIo, SocketRequest, Transmit};
use fog_ice::agent::{self, Agent, AgentConfig};
use fog_ice::strategy::{Plan, with_mapping};
use fog_signal::PeerId;
use fog_signal::client::{Client, ClientConfig};
use fog_signal::msg::{RequestId, SessionId};
use fog_stun::discovery::{self, Discovery, DiscoveryConfig, Report};
use fog_stun::rank::{self, Ranker};
use fog_turn::client::{Client as TurnClient, ClientConfig as TurnConfig};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha20Rng;

pub use config::{AcceptPolicy, CHECK_ALLOWANCE, KnownNat, NodeConfig, Seed, ServerChoice};
use conn::{Conn, Phase, SignalRelay};
pub use event::{
    CloseReason, CommandError, ConnectError, ConnectionId, ConnectionStats, Counters, Diagnosis,
    Event, FailReason, Footprint, LookupError, SendError, Via,
};
pub use fog_portmap::{TcpCommand, TcpId, TcpInput};
pub use fog_signal::msg::Transport;
use probe::{Probe, Refresh};
pub use signal::{SignalInput, SignalOutput};

/// The largest datagram [`Node::send`] takes: what fits one relayed frame once sealed (the
/// relay over signaling carries at most 1,400 bytes; sealing adds 34).
pub const MAX_DATAGRAM: usize = 1_400 - seal::OVERHEAD;
/// The most datagrams [`Node::send`] queues before the driver drains them (with
/// [`poll_transmit`](SansIo::poll_transmit)); beyond it `send` says [`SendError::Blocked`].
pub const MAX_QUEUED: usize = 1_024;
/// The most frames waiting for the signaling server (paced under its rate) before datagrams
/// relayed over signaling ([`Via::Signaling`]) are refused: [`Node::send`] says
/// [`SendError::Blocked`] (and [`Event::Writable`] follows once half have left), and a
/// transport's datagrams are dropped as on a congested path
/// ([`Counters::relay_frames_dropped`]). Without it the queue would grow without bound at the
/// server's few dozen frames a second.
pub const MAX_RELAY_FRAMES: usize = 32;
/// The most lookups waiting for their answers at once.
pub const MAX_LOOKUPS: usize = 64;
/// The code of a refusal by a node that holds [`NodeConfig::max_connections`] connections.
pub const REFUSED_FULL: u32 = 0xFFFF_0001;
/// The code of a refusal by a node that holds
/// [`NodeConfig::max_pending_incoming`] undecided offers.
pub const REFUSED_BUSY: u32 = 0xFFFF_0004;
/// The code of a refusal by a node that does not run the transport the caller asked for.
pub const REFUSED_TRANSPORT: u32 = 0xFFFF_0005;

/// The first back-off before an offer a limit refused goes again (see `Node::retry_offer`).
pub const RETRY_FIRST: Duration = Duration::from_millis(250);
/// The longest back-off between offers.
pub const RETRY_MAX: Duration = Duration::from_secs(4);
/// The most offers one `connect` makes (the first and its retries), within the connect
/// timeout.
pub const MAX_OFFERS: u32 = 12;
/// The code a node closes with when its connect timeout ended the connection.
pub const CLOSED_TIMEOUT: u32 = 0xFFFF_0002;
/// The code a node closes with when its idle timeout ended the connection.
pub const CLOSED_IDLE: u32 = 0xFFFF_0003;
/// The code a node closes a connection's signaling session with when the connection ended
/// for a reason of its own that the peer was not told of otherwise (its transport gave up,
/// say): the server holds a session for as long as both peers are online.
pub const CLOSED_ENDED: u32 = 0xFFFF_0006;

/// A close goes on the path this many times at first (the signaling server carries it too,
/// and it goes again until acknowledged: the `linger` module).
const CLOSE_COPIES: usize = 2;
/// The largest [`Event::Data`] a byte-stream transport's arrivals are joined into while the
/// application has not taken the last one.
const MAX_STREAM_CHUNK: usize = 64 * 1024;
/// Keepalive probes on the relay over signaling: they verify it still carries (the server
/// keeps the session as long as both peers are online).
const SIGNAL_RELAY_KEEPALIVE: Duration = Duration::from_secs(30);
/// The addresses of a path through the signaling server.
const UNSPECIFIED: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0);

/// How long a prediction of our own next port waits, after discovery's first report, for the
/// TURN allocation to open its flow (credentials come one signaling round trip after
/// authentication); after that it goes without, and the allocation may cost it one port.
const RELAY_WAIT: Duration = Duration::from_millis(500);
/// After an allocation is lost, the first wait before asking for a new one, doubled after each
/// loss up to the last, and back to the first once an allocation has lived the last (one
/// that a server or NAT loses sooner, again and again, leaves the wait where it is). The
/// first loss of an allocation that worked waits none of it (see [`RELAY_AT_ONCE_EVERY`]).
const RELAY_RETRY_FIRST: Duration = Duration::from_secs(1);
const RELAY_RETRY_MAX: Duration = Duration::from_secs(60);
/// An allocation that worked and is lost (RFC 8656 §7.3: a Refresh from a 5-tuple the server
/// does not know, after our NAT moved us, gets 437 Allocation Mismatch; or the Refresh is
/// not answered at all) is made again at once, since a connection may have lost every path
/// but the relay at the same moment; at most once per this long, so that a server that
/// grants and loses allocations over and over is asked at the back-off's pace instead.
const RELAY_AT_ONCE_EVERY: Duration = Duration::from_secs(30);
/// Retransmission interval of the port refresh, and its tries.
const REFRESH_RTO: Duration = Duration::from_millis(250);
const REFRESH_TRIES: u32 = 5;
/// Retransmission interval of the keepalive Binding, and its tries per round.
const WATCH_RTO: Duration = Duration::from_millis(500);
const WATCH_TRIES: u32 = 4;

/// How a connection ended.
#[derive(Debug)]
enum End {
    Failed(FailReason),
    Closed { reason: CloseReason, by_peer: bool },
}

/// FogConnect on one UDP socket (see the module docs).
#[derive(Debug)]
pub struct Node {
    config: NodeConfig,
    discovery: Option<Discovery>,
    report: Option<Report>,
    client: Client,
    signal: signal::Link,
    conns: BTreeMap<ConnectionId, Conn>,
    by_session: BTreeMap<SessionId, ConnectionId>,
    by_request: BTreeMap<RequestId, ConnectionId>,
    next_id: u64,
    /// Lookups waiting for their answer, by request.
    lookups: BTreeMap<RequestId, String>,
    /// Offers whose connection ended before the server named their session: closed on the
    /// server as soon as it does.
    cancelled: BTreeMap<RequestId, (u32, String)>,
    refresh: Option<Refresh>,
    next_refresh_port: u16,
    /// Every secret and random choice of the node comes from here; the machines it drives
    /// get seeds drawn from it, never the configured seed itself.
    rng: ChaCha20Rng,
    /// Discovery's seed (drawn once: discovery may be built again after the ranking).
    discovery_seed: u64,
    events: VecDeque<Event>,
    /// The TURN client, once the signaling server handed out credentials.
    turn: Option<TurnClient>,
    relay_requested: bool,
    /// The TURN client has sent its first request: its binding exists.
    turn_sent: bool,
    /// Until when a prediction waits for the TURN allocation's binding (see
    /// [`RELAY_WAIT`]).
    relay_wait_until: Option<Instant>,
    relayed: Option<SocketAddr>,
    /// The allocation was lost: when to ask for credentials again, and the back-off after.
    relay_retry_at: Option<Instant>,
    relay_backoff: Duration,
    /// When a lost allocation was last asked for again at once ([`RELAY_AT_ONCE_EVERY`]).
    relay_at_once: Option<Instant>,
    /// When the allocation in use was made.
    relay_made_at: Option<Instant>,
    /// Datagrams of ours to send on a UDP path: (from, to, bytes with the framing byte).
    outgoing: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    /// Buffers of sent datagrams, for the next ones a transport writes and the seal seals in
    /// place (at most [`MAX_SPARE`]): a bulk transfer allocates none per datagram.
    spare: Vec<Vec<u8>>,
    /// Where a sealed datagram is opened, reused.
    opened: Vec<u8>,
    /// The driver said more datagrams of the same read follow this one
    /// ([`SansIo::handle_packet_of_batch`]).
    batch_more: bool,
    /// QUIC connections that took datagrams of a batch not yet pumped: their acknowledgement
    /// and what it lets them send go once, after the batch's last datagram, as quinn's own
    /// endpoint does (one entry per connection at most).
    quic_unpumped: Vec<ConnectionId>,
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
    /// What was dropped, and why.
    counters: Counters,
    /// What the agents may still send to IPs that have not answered.
    ledger: ledger::ProbeLedger,
    /// Our connections by the session tag their sealed datagrams carry to us.
    by_tag: BTreeMap<[u8; 8], ConnectionId>,
    /// Closes that outlive their connections, by the same tag (see the `linger` module).
    lingering: BTreeMap<[u8; 8], linger::Linger>,
    /// The latest instant the node was given.
    now: Instant,
    /// A `send` found the queue full: `Writable` is owed once it has room.
    blocked: bool,
    /// Our QUIC certificate, made on the first QUIC connection and shared by all of them
    /// (its fingerprint goes into descriptions).
    quic_cert: Option<fog_quic::Certificate>,
    /// Our DTLS certificate for WebRTC connections, made on the first RTC connection.
    rtc_identity: Option<fog_rtc::Identity>,
    /// The base socket's port mapping ([`NodeConfig::port_mapping`]), from the start on.
    portmap: Option<portmap::PortMap>,
}

impl Node {
    /// A node; discovery starts at its first [`handle_timeout`](SansIo::handle_timeout), which
    /// [`poll_timeout`](SansIo::poll_timeout) asks for at `now`.
    pub fn new(config: NodeConfig, now: Instant) -> Node {
        let mut rng = ChaCha20Rng::from_seed(config.seed.0);
        let discovery_seed = rng.next_u64();
        let discovery_config = discovery_config(&config, discovery_seed);
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
            Ranker::new(
                rank::RankConfig::new(config.base, rng.next_u64()),
                servers,
                now,
            )
        });
        let mut node = Node {
            discovery: ranker.is_none().then(|| Discovery::new(discovery_config)),
            ranker,
            pending_relay: None,
            report: None,
            client: signal_client(&config, random_bytes(&mut rng)),
            signal: signal::Link::default(),
            conns: BTreeMap::new(),
            by_session: BTreeMap::new(),
            by_request: BTreeMap::new(),
            next_id: 1,
            lookups: BTreeMap::new(),
            cancelled: BTreeMap::new(),
            refresh: None,
            next_refresh_port,
            rng,
            discovery_seed,
            events: VecDeque::new(),
            turn: None,
            relay_requested: false,
            turn_sent: false,
            relay_wait_until: None,
            relayed: None,
            relay_retry_at: None,
            relay_backoff: RELAY_RETRY_FIRST,
            relay_at_once: None,
            relay_made_at: None,
            outgoing: VecDeque::new(),
            spare: Vec::new(),
            opened: Vec::new(),
            batch_more: false,
            quic_unpumped: Vec::new(),
            created: now,
            started: false,
            hosts: Vec::new(),
            refused: Vec::new(),
            socket_requests: VecDeque::new(),
            watch: None,
            counters: Counters::default(),
            quic_cert: None,
            rtc_identity: None,
            ledger: ledger::ProbeLedger::default(),
            by_tag: BTreeMap::new(),
            lingering: BTreeMap::new(),
            now,
            blocked: false,
            portmap: None,
            config,
        };
        let interfaces = std::mem::take(&mut node.config.interfaces);
        node.set_interfaces(now, &interfaces);
        // Nobody to tell yet.
        node.events.clear();
        node
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

    /// Connects to `peer` for `service`, returning the connection's handle at once. What
    /// follows comes as events carrying it: [`Event::Connected`] when a path is verified, or
    /// [`Event::Failed`] with the reason. The offer goes once discovery is done and the
    /// signaling server accepted us (and, when our next port must be predicted, once the NAT's
    /// current port was read); the connect timeout counts from now.
    pub fn connect(
        &mut self,
        now: Instant,
        peer: PeerId,
        service: u16,
    ) -> Result<ConnectionId, ConnectError> {
        self.connect_with(now, peer, service, Transport::Datagram)
    }

    /// [`connect`](Self::connect) over `transport`: [`Transport::Datagram`] is the node's own
    /// unreliable datagrams; [`Transport::Kcp`] makes each [`send`](Self::send) a reliable,
    /// ordered message (up to about 170 KB) and closes gracefully (see the `transport` module);
    /// [`Transport::Quic`] does the same over a QUIC connection authenticated by both
    /// identities (messages up to 1 MiB; see the `quic` module); [`Transport::Sctp`] over an
    /// SCTP association (messages up to 64 KiB, each arriving whole).
    /// The transport goes in the signed offer; a peer that does not run it refuses with
    /// [`REFUSED_TRANSPORT`].
    pub fn connect_with(
        &mut self,
        now: Instant,
        peer: PeerId,
        service: u16,
        transport: Transport,
    ) -> Result<ConnectionId, ConnectError> {
        self.now = self.now.max(now);
        if peer == self.peer_id() {
            return Err(ConnectError::SelfConnect);
        }
        if !transport::supported(&transport) || !self.config.transports.contains(&transport) {
            return Err(ConnectError::UnsupportedTransport(transport));
        }
        if self.conns.len() >= self.config.max_connections {
            return Err(ConnectError::TooManyConnections {
                limit: self.config.max_connections,
            });
        }
        let id = self.new_id();
        let (ufrag, exchange) = (self.ufrag(), self.exchange());
        let mut conn = Conn::new(id, peer, service, false, ufrag, exchange, now);
        conn.transport = transport;
        self.conns.insert(id, conn);
        self.progress(now);
        Ok(id)
    }

    /// The transports this node runs from now on ([`NodeConfig::transports`]): offers asking
    /// for another are refused with [`REFUSED_TRANSPORT`]. Connections already made keep theirs.
    pub fn set_transports(&mut self, transports: Vec<Transport>) {
        self.config.transports = transports;
    }

    /// Accepts an incoming connection ([`Event::Incoming`]): the answer goes (once discovery
    /// is done), and punching starts.
    pub fn accept(&mut self, now: Instant, id: ConnectionId) -> Result<(), CommandError> {
        self.now = self.now.max(now);
        let conn = self
            .conns
            .get_mut(&id)
            .ok_or(CommandError::UnknownConnection)?;
        if !matches!(conn.phase, Phase::Incoming) {
            return Err(CommandError::NotIncoming);
        }
        conn.phase = Phase::Accepted;
        self.progress(now);
        Ok(())
    }

    /// Refuses an incoming connection ([`Event::Incoming`]): the caller's connection fails
    /// with [`FailReason::Refused`] carrying `code` and `reason` (at most 256 bytes are
    /// sent). The handle ends here; no further event names it.
    pub fn refuse(
        &mut self,
        now: Instant,
        id: ConnectionId,
        code: u32,
        reason: &str,
    ) -> Result<(), CommandError> {
        self.now = self.now.max(now);
        let conn = self.conns.get(&id).ok_or(CommandError::UnknownConnection)?;
        if !matches!(conn.phase, Phase::Incoming) {
            return Err(CommandError::NotIncoming);
        }
        self.tell_peer(id, code, reason);
        self.release(now, id);
        Ok(())
    }

    /// Closes a connection in any phase (an incoming one awaiting a decision is refused). The
    /// peer learns `code` and `reason` over the path and over signaling while the server
    /// knows the session, and reports [`Event::Closed`] with `by_peer: true` (or
    /// [`Event::Failed`] if it never had a path). This node reports [`Event::Closed`] with
    /// `by_peer: false` and releases everything the connection held: at once for a datagram
    /// connection; for a stream (KCP, QUIC, uTP, SCTP, RTC) once the transport's graceful close
    /// has delivered what was sent, or given up.
    /// [`abort`](Self::abort) does not wait.
    pub fn close(
        &mut self,
        now: Instant,
        id: ConnectionId,
        code: u32,
        reason: &str,
    ) -> Result<(), CommandError> {
        self.now = self.now.max(now);
        let Some(conn) = self.conns.get_mut(&id) else {
            return Err(CommandError::UnknownConnection);
        };
        // A stream closes gracefully first: what was sent is delivered, then the close goes.
        if let Some(stream) = &mut conn.stream {
            if conn.closing.is_none() {
                conn.closing = Some((code, truncate(reason, 256).to_owned()));
                stream.close(now);
                self.pump_streams(now, Some(id));
            }
            return Ok(());
        }
        // A datagram connection has nothing in flight to wait for.
        self.abort(now, id, code, reason)
    }

    /// Ends connection `id` at once, telling the peer, without waiting for a stream's graceful
    /// close (see [`close`](Self::close)): what the peer has not acknowledged yet is lost, and
    /// it hears `code` and `reason` as from `close`. For a driver that is stopping and cannot
    /// wait any longer; a connection already closing gracefully is cut short too.
    pub fn abort(
        &mut self,
        now: Instant,
        id: ConnectionId,
        code: u32,
        reason: &str,
    ) -> Result<(), CommandError> {
        self.now = self.now.max(now);
        if !self.conns.contains_key(&id) {
            return Err(CommandError::UnknownConnection);
        }
        self.tell_peer(id, code, reason);
        self.end(
            now,
            id,
            End::Closed {
                reason: CloseReason::Application {
                    code,
                    reason: reason.to_owned(),
                },
                by_peer: false,
            },
        );
        Ok(())
    }

    /// Asks the signaling server who `name` (an alias or a peer ID) is; the answer comes as
    /// [`Event::LookupResult`] naming it (or [`Event::LookupFailed`] if signaling drops
    /// first).
    pub fn lookup(&mut self, name: &str) -> Result<(), LookupError> {
        if self.lookups.len() >= MAX_LOOKUPS {
            return Err(LookupError::TooMany);
        }
        let request = self
            .client
            .lookup(name)
            .map_err(|_| LookupError::NotReady)?;
        self.lookups.insert(request, name.to_owned());
        Ok(())
    }

    /// [`send`](Self::send) of a buffer the caller hands over: over QUIC a message longer than
    /// a few KiB goes to the transport as it is, without the copy `send` makes of it; for the
    /// rest it is `send`. The buffer is the node's whatever the answer.
    pub fn send_vec(
        &mut self,
        now: Instant,
        id: ConnectionId,
        data: Vec<u8>,
    ) -> Result<(), SendError> {
        self.now = self.now.max(now);
        let Some(conn) = self
            .conns
            .get_mut(&id)
            .filter(|c| c.closing.is_none() && c.stream.is_some())
        else {
            return self.send(now, id, &data);
        };
        let len = data.len();
        let sent = conn
            .stream
            .as_mut()
            .map_or(Err(SendError::NotConnected), |s| s.send_vec(now, data));
        if let Err(e) = sent {
            // `Writable` follows when the stream has room again.
            conn.stream_blocked |= e == SendError::Blocked;
            return Err(e);
        }
        conn.sent.add(now, len);
        self.pump_streams(now, Some(id));
        Ok(())
    }

    /// Sends one datagram to the peer of a connection on its current path (unreliable,
    /// unordered, at most [`MAX_DATAGRAM`] bytes): what the transports build on.
    pub fn send(&mut self, now: Instant, id: ConnectionId, data: &[u8]) -> Result<(), SendError> {
        self.now = self.now.max(now);
        let conn = self
            .conns
            .get_mut(&id)
            .ok_or(SendError::UnknownConnection)?;
        if conn.closing.is_some() {
            return Err(SendError::NotConnected);
        }
        if let Some(stream) = &mut conn.stream {
            if let Err(e) = stream.send(now, data) {
                // `Writable` follows when the stream has room again.
                conn.stream_blocked |= e == SendError::Blocked;
                return Err(e);
            }
            conn.sent.add(now, data.len());
            self.pump_streams(now, Some(id));
            return Ok(());
        }
        if conn.transport != Transport::Datagram {
            // The stream starts with the first path.
            return Err(SendError::NotConnected);
        }
        if data.len() > MAX_DATAGRAM {
            return Err(SendError::TooLong);
        }
        if self.outgoing.len() >= MAX_QUEUED {
            self.blocked = true;
            return Err(SendError::Blocked);
        }
        let path = conn.agent().and_then(Agent::data_path);
        let relay = match (conn.signal_relay, conn.session, conn.connected()) {
            (Some(_), Some(session), true) => Some(session),
            _ => None,
        };
        let Some(keys) = conn
            .keys
            .as_mut()
            .filter(|_| path.is_some() || relay.is_some())
        else {
            return Err(SendError::NotConnected);
        };
        if path.is_none() && self.client.frames_waiting() >= MAX_RELAY_FRAMES {
            self.blocked = true;
            return Err(SendError::Blocked);
        }
        let mut sealed = self
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(SPARE_CAPACITY));
        sealed.clear();
        sealed.resize(seal::PAYLOAD_AT, 0);
        sealed.extend_from_slice(data);
        keys.seal_in_place(seal::Kind::Data, &mut sealed);
        if let Some((local, remote)) = path {
            self.outgoing.push_back((local, remote, sealed));
        } else if let Some(session) = relay {
            let relayed = self.client.relay(session, &sealed);
            recycle(&mut self.spare, sealed);
            relayed.map_err(|_| SendError::NotConnected)?;
        }
        conn.sent.add(now, data.len());
        Ok(())
    }

    /// Why connection `id` took the path it took: both NAT behaviours, what the pairing
    /// expects of them and the route it chose, every candidate pair's fate, the path now.
    /// `None` for a connection this node does not know.
    pub fn diagnose(&self, now: Instant, id: ConnectionId) -> Option<Diagnosis> {
        let conn = self.conns.get(&id)?;
        let agent = conn.agent();
        let theirs = conn
            .remote
            .as_ref()
            .and_then(|d| d.nat)
            .map(Behaviour::from);
        let plan = agent.map(Agent::plan);
        Some(Diagnosis {
            ours: self.behaviour(),
            theirs,
            outcome: plan.map(|p| p.outcome),
            route: plan
                .and_then(|p| p.route.as_ref())
                .map(|r| format!("{r:?}")),
            relay_only: !self.config.direct,
            path: self.stats(now, id).and_then(|s| s.path),
            pairs: agent.map(Agent::pairs).unwrap_or_default(),
            checks_sent: agent.map_or(0, |a| a.stats().checks_sent),
        })
    }

    /// A connection's figures at `now`, or `None` for an unknown handle.
    pub fn stats(&self, now: Instant, id: ConnectionId) -> Option<ConnectionStats> {
        let conn = self.conns.get(&id)?;
        let agent = conn.agent();
        let path = match (conn.path, agent.and_then(Agent::selected)) {
            (Some(Via::Signaling), _) => Some((Via::Signaling, UNSPECIFIED, UNSPECIFIED)),
            (Some(via), Some((local, remote))) => Some((via, local, remote)),
            _ => None,
        };
        let (rtt, rtt_var) = match (conn.path, agent.and_then(Agent::selected_rtt)) {
            (Some(Via::Signaling), _) => (conn.signal_relay.and_then(|r| r.rtt), None),
            (_, Some((srtt, var))) => (Some(srtt), Some(var)),
            _ => (None, None),
        };
        Some(ConnectionStats {
            peer: conn.peer,
            service: conn.service,
            passive: conn.passive,
            path,
            rtt,
            rtt_var,
            sent_bytes: conn.sent.total_bytes,
            sent_datagrams: conn.sent.datagrams,
            received_bytes: conn.received.total_bytes,
            received_datagrams: conn.received.datagrams,
            up_rate: conn.sent.rate(now),
            down_rate: conn.received.rate(now),
            connected_for: conn.connected_at.map(|t| now.saturating_duration_since(t)),
            path_changes: conn.path_changes,
        })
    }

    /// The handles of every connection the node holds, in every phase.
    pub fn connections(&self) -> impl Iterator<Item = ConnectionId> + '_ {
        self.conns.keys().copied()
    }

    /// What the node holds now: connections, deadlines, sockets, permissions, requests.
    pub fn footprint(&self) -> Footprint {
        let birthday: usize = self
            .conns
            .values()
            .filter_map(Conn::agent)
            .map(|a| a.birthday_sockets().len())
            .sum();
        Footprint {
            connections: self.conns.len(),
            deadlines: self.deadlines().count(),
            sockets: self.hosts.len()
                + usize::from(self.refresh.is_some())
                + birthday
                + self.linger_sockets(),
            relay_permissions: self.turn.as_ref().map_or(0, TurnClient::permission_count),
            requests: self.lookups.len() + self.by_request.len() + self.cancelled.len(),
            queued: self.outgoing.len(),
            signal_frames: self.client.frames_waiting(),
        }
    }

    /// What the node dropped from the network, and why.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    fn new_id(&mut self) -> ConnectionId {
        let id = ConnectionId(self.next_id);
        self.next_id += 1;
        id
    }

    fn next_random(&mut self) -> u64 {
        self.rng.next_u64()
    }

    /// A check username fragment: 8 characters, 48 random bits (RFC 8445 §5.3 asks for 24).
    fn ufrag(&mut self) -> String {
        const ICE_CHARS: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let r = self.next_random();
        (0..8)
            .map(|i| char::from(ICE_CHARS[((r >> (i * 6)) & 63) as usize]))
            .collect()
    }

    /// The fingerprint to sign into a description for `transport`: ours on QUIC, else none.
    fn quic_fingerprint(
        &mut self,
        transport: &Transport,
    ) -> Option<fog_signal::msg::CertFingerprint> {
        if *transport != Transport::Quic {
            return None;
        }
        if self.quic_cert.is_none() {
            self.quic_cert = fog_quic::Certificate::self_signed(&self.config.key).ok();
        }
        let cert = self.quic_cert.as_ref()?;
        Some(fog_signal::msg::CertFingerprint(cert.fingerprint().0))
    }

    /// The DTLS fingerprint to sign into a description for `transport`: ours on RTC, else
    /// none. The certificate's key comes from the OS random source, inside fog-rtc's provider.
    fn rtc_fingerprint(
        &mut self,
        transport: &Transport,
    ) -> Option<fog_signal::msg::CertFingerprint> {
        if !matches!(transport, Transport::Rtc | Transport::Browser) {
            return None;
        }
        if self.rtc_identity.is_none() {
            self.rtc_identity = fog_rtc::Identity::generate();
        }
        let identity = self.rtc_identity.as_ref()?;
        Some(fog_signal::msg::CertFingerprint(identity.fingerprint()))
    }

    /// A fresh ephemeral key exchange.
    fn exchange(&mut self) -> seal::Exchange {
        seal::Exchange::new(random_bytes(&mut self.rng))
    }

    /// `description` with our exchange key and our signature over its transcript.
    fn sign(
        &self,
        role: &seal::Role<'_>,
        mut description: fog_signal::msg::Description,
        key: fog_signal::msg::ExchangeKey,
    ) -> fog_signal::msg::Description {
        let transcript = seal::transcript(role, &description, &key);
        description.seal = Some(fog_signal::msg::Seal {
            key,
            signature: fog_signal::msg::Sig(self.config.key.sign(&transcript)),
        });
        description
    }

    /// The peer's exchange key from `description`, if its signature verifies for `role`;
    /// counted otherwise.
    fn verified(
        &mut self,
        role: &seal::Role<'_>,
        signer: PeerId,
        description: &fog_signal::msg::Description,
    ) -> Option<fog_signal::msg::ExchangeKey> {
        let valid = description.seal.filter(|s| {
            signer.verify(&seal::transcript(role, description, &s.key), &s.signature.0)
        });
        if valid.is_none() {
            self.counters.bad_signatures += 1;
        }
        valid.map(|s| s.key)
    }

    /// Sends `candidate` to the peer of `session` (whose peer is `peer`), signed. A session the
    /// server forgot refuses it; the peer keeps the candidates it has.
    fn trickle(
        &mut self,
        session: SessionId,
        peer: PeerId,
        candidate: &fog_ice::candidate::Candidate,
    ) {
        let wire = candidates::to_wire(candidate);
        let transcript = seal::candidate_transcript(self.peer_id(), peer, session, &wire);
        let signature = fog_signal::msg::Sig(self.config.key.sign(&transcript));
        let _ = self.client.trickle_signed(session, wire, signature);
    }

    /// A connection's keys are known: sealed datagrams to it are recognised from now on.
    fn keyed(&mut self, id: ConnectionId, keys: seal::Keys) {
        self.by_tag.insert(keys.recv_tag, id);
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.keys = Some(keys);
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

    /// Moves everything forward that waits on something: signaling events, queued offers,
    /// accepted answers.
    fn progress(&mut self, now: Instant) {
        self.drain_signal_events(now);
        // Retries that are due wait for the rest like a new offer (and arm no timer).
        for conn in self.conns.values_mut() {
            if matches!(conn.phase, Phase::Retrying { at } if at <= now) {
                conn.phase = Phase::Queued;
            }
        }
        // A refresh under way for connections that all ended (closed, failed, refused) serves
        // nobody: its socket goes now, not never (the chaos run found it held).
        if self.refresh.is_some()
            && !self
                .conns
                .values()
                .any(|c| matches!(c.phase, Phase::Queued | Phase::Accepted))
        {
            if let Some(refresh) = self.refresh.take() {
                self.socket_requests
                    .push_back(SocketRequest::Unbind(refresh.probe.local));
            }
        }
        if self.report.is_none() || !self.client.is_authenticated() {
            return;
        }
        let waiting: Vec<ConnectionId> = self
            .conns
            .values()
            .filter(|c| matches!(c.phase, Phase::Queued | Phase::Accepted))
            .map(|c| c.id)
            .collect();
        if waiting.is_empty() {
            return;
        }
        let fresh = self.refresh.as_ref().and_then(|r| r.mapped);
        if self.needs_refresh() && fresh.is_none() {
            // The TURN allocation opens a new flow from the base: it must come before the
            // reading that our prediction counts from, not between it and our first punch.
            if !self.turn_sent && self.relay_wait_until.is_some_and(|t| now < t) {
                return;
            }
            if self.refresh.is_none() {
                self.start_refresh(now);
            }
            return;
        }
        for id in waiting {
            match self.conns.get(&id).map(|c| c.passive) {
                Some(false) => self.send_offer(now, id),
                Some(true) => self.send_answer(now, id),
                None => {}
            }
        }
        // A refresh serves the offers and answers made from it only; its socket goes.
        if let Some(refresh) = self.refresh.take_if(|r| r.mapped.is_some()) {
            self.socket_requests
                .push_back(SocketRequest::Unbind(refresh.probe.local));
        }
        self.drain_signal_events(now);
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
            id: fog_stun::wire::TransactionId::new(id),
            local,
            next_at: at,
            sent: 0,
        }
    }

    fn send_offer(&mut self, now: Instant, id: ConnectionId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (peer, ufrag, service) = (conn.peer, conn.ufrag.clone(), conn.service);
        let key = conn.exchange.public();
        let transport = conn.transport.clone();
        let mut description = self.description(&ufrag, service, &transport);
        description.quic = self.quic_fingerprint(&transport);
        description.rtc = self.rtc_fingerprint(&transport);
        let role = seal::Role::Offer {
            from: self.peer_id(),
            to: peer,
        };
        let description = self.sign(&role, description, key);
        match self.client.connect(peer, description) {
            Ok(request) => {
                self.by_request.insert(request, id);
                if let Some(conn) = self.conns.get_mut(&id) {
                    conn.phase = Phase::Offered { request };
                    conn.offers += 1;
                }
            }
            Err(_) => self.end(now, id, End::Failed(FailReason::SignalingLost)),
        }
    }

    fn send_answer(&mut self, now: Instant, id: ConnectionId) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (Some(session), Some(offer_key), ufrag, service, peer) = (
            conn.session,
            conn.remote_key,
            conn.ufrag.clone(),
            conn.service,
            conn.peer,
        ) else {
            return;
        };
        let key = conn.exchange.public();
        if conn.transport == Transport::Browser {
            self.answer_browser(now, id, session, offer_key, key);
            return;
        }
        let keys = seal::Keys::derive(
            &conn.exchange,
            &offer_key,
            session,
            peer,
            self.peer_id(),
            false,
        );
        let transport = conn.transport.clone();
        let mut description = self.description(&ufrag, service, &transport);
        description.quic = self.quic_fingerprint(&transport);
        description.rtc = self.rtc_fingerprint(&transport);
        let role = seal::Role::Answer {
            from: self.peer_id(),
            to: peer,
            session,
            offer_key: &offer_key,
        };
        let description = self.sign(&role, description, key);
        // Our NAT opens before the answer leaves. The offerer checks in full as the answer
        // reaches it, and a check that reaches our router before our own (low-TTL) opening
        // check toward its source port has left can stay there as state for unsolicited input
        // and move our port for that flow (NAT-NOTES; the real-NAT matrix's `masquerade` ×
        // `sequential` lost about one run in four that way, with signaling a millisecond
        // away). So the agent begins now, and its first checks wait in it ahead of the answer,
        // which a driver drains after the transmits.
        self.keyed(id, keys);
        self.build_agent(now, id);
        if let Some(agent) = self.conns.get_mut(&id).and_then(|c| c.agent_mut()) {
            agent.handle_timeout(now);
        }
        self.drain_agents();
        if self.client.answer(session, description).is_err() {
            self.end(now, id, End::Failed(FailReason::SignalingLost));
        }
    }

    /// Answers a browser ([`Transport::Browser`], `docs/browser.md`): our signed description
    /// carries the ICE credentials and host and server-reflexive candidates of a fog-rtc peer
    /// that speaks raw ICE and DTLS on our sockets, and our DTLS fingerprint; the peer accepts
    /// only the certificate whose fingerprint the browser signed into its offer. No agent and
    /// no session keys: the browser checks our candidates, and DTLS is the encryption.
    fn answer_browser(
        &mut self,
        now: Instant,
        id: ConnectionId,
        session: SessionId,
        offer_key: fog_signal::msg::ExchangeKey,
        key: fog_signal::msg::ExchangeKey,
    ) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        let (peer, service) = (conn.peer, conn.service);
        let Some(remote) = conn.remote.as_ref() else {
            return;
        };
        let (remote_ice, remote_fingerprint) = (
            fog_rtc::IceCredentials {
                ufrag: remote.credentials.ufrag.clone(),
                pwd: remote.credentials.pwd.clone(),
            },
            remote.rtc,
        );
        // The browser's signed candidates (already capped on arrival); what we send them
        // before they answer is metered by the probe ledger like any check.
        let remotes: Vec<SocketAddr> = remote.candidates.iter().map(|c| c.addr).collect();
        let local_ice = fog_rtc::IceCredentials::from_seed(random_bytes(&mut self.rng));
        let fingerprint = self.rtc_fingerprint(&Transport::Browser);
        let locals: Vec<SocketAddr> = std::iter::once(self.config.base)
            .chain(self.hosts.iter().copied())
            .collect();
        let rtc = match (&self.rtc_identity, remote_fingerprint) {
            (Some(identity), Some(theirs)) => rtc::Rtc::browser(
                identity,
                local_ice.clone(),
                remote_ice,
                theirs,
                locals,
                remotes,
                now,
            ),
            _ => None,
        };
        let Some(rtc) = rtc else {
            self.tell_peer(id, REFUSED_TRANSPORT, "no WebRTC peer for this browser");
            self.end(now, id, End::Failed(FailReason::BrowserFailed));
            return;
        };
        let mut description = self.description(&local_ice.ufrag, service, &Transport::Browser);
        // A browser reaches our sockets, not a TURN allocation's or a predicted port (the
        // relay is for nodes, whose datagrams are sealed), and has no use for our NAT's
        // behaviour. The password goes too: the browser's checks need it (it needs no
        // secrecy, as the DTLS fingerprints, which are signed, are what authenticates).
        description.candidates.retain(|c| {
            use fog_signal::msg::CandidateKind as K;
            matches!(c.kind, K::Host | K::Srflx | K::Mapped)
        });
        description.nat = None;
        description.credentials.pwd = local_ice.pwd;
        description.rtc = fingerprint;
        let role = seal::Role::Answer {
            from: self.peer_id(),
            to: peer,
            session,
            offer_key: &offer_key,
        };
        let description = self.sign(&role, description, key);
        if self.client.answer(session, description).is_err() {
            self.end(now, id, End::Failed(FailReason::SignalingLost));
            return;
        }
        if let Some(conn) = self.conns.get_mut(&id) {
            conn.ufrag = local_ice.ufrag;
            conn.stream = Some(transport::Stream::Rtc(Box::new(rtc)));
            conn.phase = Phase::Browser;
        }
    }

    /// A datagram on our sockets for a browser's peer (STUN naming its ufrag, DTLS from the
    /// browser's address): whether one took it.
    fn give_browser(&mut self, now: Instant, packet: &Receive<'_>) -> bool {
        // Only STUN and DTLS can be a browser's (RFC 7983 §7): sealed datagrams, QUIC and the
        // rest never walk the connections.
        if !matches!(
            fog_core::classify(packet.payload, false),
            fog_core::Protocol::Stun | fog_core::Protocol::Dtls
        ) {
            return false;
        }
        let found = self
            .conns
            .values_mut()
            .find(|c| matches!(&c.stream, Some(transport::Stream::Rtc(r)) if r.accepts(packet)));
        let Some(conn) = found else {
            return false;
        };
        if let Some(transport::Stream::Rtc(rtc)) = &mut conn.stream {
            rtc.handle_raw(
                now,
                Receive {
                    source: packet.source,
                    local: packet.local,
                    payload: packet.payload,
                },
            );
        }
        conn.last_heard = now;
        conn.received.datagrams += 1;
        let id = conn.id;
        // It knew our ufrag for this browser (STUN) or ICE validated it (DTLS): it answers.
        self.ledger.answered(now, packet.source.ip());
        self.pump_streams(now, Some(id));
        true
    }

    /// The agent of a connection whose two descriptions are known.
    fn build_agent(&mut self, now: Instant, id: ConnectionId) {
        let mine = self.behaviour().unwrap_or(Behaviour::UdpBlocked);
        let mapped = self.config.direct && self.mapped_candidate().is_some();
        let seed = self.next_random();
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let (Some(remote), Some(keys)) = (&conn.remote, &conn.keys) else {
            return;
        };
        let theirs = remote.nat.map_or(Behaviour::UdpBlocked, Into::into);
        // A side that offers a verified port mapping is reachable there by anyone.
        let mine = with_mapping(mine, mapped);
        let theirs = with_mapping(theirs, portmap::has_mapped(&remote.candidates));
        let offerer = !conn.passive;
        let (a, b, me) = if offerer {
            (mine, theirs, Who::A)
        } else {
            (theirs, mine, Who::B)
        };
        let mut plan = Plan::new(a, b, me, &self.config.strategy);
        if !self.config.direct {
            plan = plan.relay_only();
        }
        // No UDP on one side: the signaling server carries the datagrams.
        if (a == Behaviour::UdpBlocked || b == Behaviour::UdpBlocked) && conn.session.is_some() {
            conn.signal_relay = Some(SignalRelay {
                probe_sent: None,
                next_probe: now,
                rtt: None,
            });
        }
        // The passwords from the key exchange: a check that verifies proves its sender holds
        // the session's secret (the key confirmation).
        let local_credentials = agent::Credentials {
            ufrag: conn.ufrag.clone(),
            pwd: keys.local_pwd.clone(),
        };
        let remote_credentials = agent::Credentials {
            ufrag: remote.credentials.ufrag.clone(),
            pwd: keys.remote_pwd.clone(),
        };
        let mut config = AgentConfig::new(
            local_credentials,
            remote_credentials,
            offerer,
            self.config.base,
            plan,
            seed,
        );
        config.hosts = self.hosts.clone();
        let mut agent = Agent::new(config);
        for c in &remote.candidates {
            agent.add_remote(now, candidates::from_wire(c));
        }
        // Punch at once: the answerer opens its NAT quietly (low TTL) as it answers, the
        // offerer checks in full as the answer arrives, so the offerer's first check finds the
        // answerer's NAT open and no NAT sees unsolicited input. At the instant the server's
        // punch sync names, the answerer speaks up in full (see `Agent::set_quiet`).
        agent.set_quiet(!offerer && conn.punch_at.is_none());
        agent.start(now);
        if let Some(relayed) = self.relayed {
            agent.set_relayed(now, relayed);
            if let Some(turn) = &mut self.turn {
                for peer in agent.relay_peers() {
                    let _ = turn.create_permission(now, peer.ip());
                }
            }
        }
        conn.phase = Phase::Running(Box::new(agent));
    }

    /// Tells the peer of `id` that we end the connection: on its path, over signaling while
    /// the server knows the session, or once the server names it.
    fn tell_peer(&mut self, id: ConnectionId, code: u32, reason: &str) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let path = conn.agent().and_then(Agent::data_path);
        let mut message = Vec::with_capacity(4 + reason.len());
        message.extend_from_slice(&code.to_be_bytes());
        message.extend_from_slice(truncate(reason, fog_signal::msg::MAX_CLOSE_REASON).as_bytes());
        if let (Some((local, remote)), Some(keys)) = (path, &mut conn.keys) {
            for _ in 0..CLOSE_COPIES {
                let sealed = keys.seal(seal::Kind::Close, &message);
                self.outgoing.push_back((local, remote, sealed));
            }
        }
        match (conn.session.take(), &conn.phase) {
            (Some(session), _) => {
                self.by_session.remove(&session);
                // A server that forgot the session answers unknown_session; nothing to do.
                // Without an authenticated connection the close goes with a retransmission.
                let unsent = self.client.close(session, code, reason).is_err();
                conn.close_role = Some(linger::Role::Closer {
                    message,
                    tries: 0,
                    rto: linger::CLOSE_RTO,
                    signal: unsent.then(|| (session, code, truncate(reason, 256).to_owned())),
                });
            }
            (None, Phase::Offered { request }) => {
                self.cancelled
                    .insert(*request, (code, truncate(reason, 256).to_owned()));
            }
            _ => {
                conn.close_role = Some(linger::Role::Closer {
                    message,
                    tries: 0,
                    rto: linger::CLOSE_RTO,
                    signal: None,
                });
            }
        }
    }

    /// Ends a connection and reports it.
    fn end(&mut self, now: Instant, id: ConnectionId, end: End) {
        if !self.release(now, id) {
            return;
        }
        self.events.push_back(match end {
            End::Failed(reason) => Event::Failed { id, reason },
            End::Closed { reason, by_peer } => Event::Closed {
                id,
                reason,
                by_peer,
            },
        });
    }

    /// Forgets a connection and releases what it held: its sockets, the relay permissions no
    /// other connection uses, its indexes. Whether there was one.
    fn release(&mut self, now: Instant, id: ConnectionId) -> bool {
        let Some(mut conn) = self.conns.remove(&id) else {
            return false;
        };
        if let Some(session) = conn.session {
            self.by_session.remove(&session);
            // The server keeps a session for as long as both peers are online: one that
            // nobody closed yet is closed here (the peer hears of it if it still cares).
            if conn.connected() {
                let _ = self.client.close(session, CLOSED_ENDED, "connection ended");
            }
        }
        if let Some(keys) = &conn.keys {
            self.by_tag.remove(&keys.recv_tag);
        }
        // What the close leaves behind: retransmissions, or answers to them.
        let path = conn.agent().and_then(Agent::data_path);
        let mut kept = None;
        if let (Some(role), Some((local, remote)), Some(keys)) =
            (conn.close_role.take(), path, conn.keys.take())
        {
            let next_at = match role {
                linger::Role::Closer { .. } => now + linger::CLOSE_RTO,
                linger::Role::Acker => now + linger::ACK_LINGER,
            };
            let birthday = conn
                .agent()
                .is_some_and(|a| a.birthday_sockets().contains(&local));
            kept = birthday.then_some(local);
            let tag = keys.recv_tag;
            self.linger(
                tag,
                linger::Linger {
                    keys,
                    path: (local, remote),
                    role,
                    next_at,
                    socket: kept,
                },
            );
        }
        if let Phase::Offered { request } = conn.phase {
            self.by_request.remove(&request);
        }
        if let Some(agent) = conn.agent_mut() {
            // The sockets in use, and those a round gave up that were not taken yet (found by
            // the chaos run, seed 392: a connection that ended in the same turn as its round
            // kept a birthday socket bound for ever); the one its close lingers on goes later.
            let released = agent.take_released();
            for &socket in agent.birthday_sockets().iter().chain(&released) {
                if Some(socket) != kept {
                    self.socket_requests
                        .push_back(SocketRequest::Unbind(socket));
                }
            }
            if let Some(turn) = &mut self.turn {
                for peer in agent.relay_peers() {
                    let ip = peer.ip();
                    let shared = self
                        .conns
                        .values()
                        .filter_map(Conn::agent)
                        .any(|a| a.relay_peers().any(|p| p.ip() == ip));
                    if !shared {
                        turn.release_permission(ip);
                    }
                }
            }
        }
        true
    }

    /// Hands the agents' events on.
    fn drain_agents(&mut self) {
        let mut happened = Vec::new();
        for conn in self.conns.values_mut() {
            let id = conn.id;
            let Some(agent) = conn.agent_mut() else {
                continue;
            };
            while let Some(event) = agent.poll_event() {
                happened.push((id, event));
            }
        }
        for (id, event) in happened {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            match event {
                agent::Event::Selected {
                    local,
                    remote,
                    rtt,
                    relayed,
                } => {
                    let via = if relayed { Via::Turn } else { Via::Direct };
                    self.path_selected(id, local, remote, rtt, via);
                }
                agent::Event::GaveUp => {
                    conn.gave_up = true;
                    if conn.connected() {
                        self.events.push_back(Event::DirectFailed { id });
                    }
                }
                agent::Event::PathLost { .. } => {
                    if conn.connected() {
                        self.events.push_back(Event::PathLost { id });
                    }
                }
                agent::Event::Validated { remote, .. } => {
                    self.ledger.answered(self.now, remote.ip());
                }
            }
        }
    }

    /// A connection has a (new) path: `Connected` the first time, `PathChanged` after.
    fn path_selected(
        &mut self,
        id: ConnectionId,
        local: SocketAddr,
        remote: SocketAddr,
        rtt: Duration,
        via: Via,
    ) {
        // uTP and QUIC streams draw their connection ids from the node's randomness (only
        // then, so that datagram connections draw what they always did).
        let seed = match self.conns.get(&id) {
            Some(c)
                if matches!(c.transport, Transport::Utp | Transport::Quic)
                    && c.connected_at.is_none() =>
            {
                random_bytes(&mut self.rng)
            }
            _ => [0; 32],
        };
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        conn.path = Some(via);
        if conn.connected_at.is_some() {
            conn.path_changes += 1;
            if let Some(stream) = &mut conn.stream {
                stream.path_changed(self.now);
            }
            self.events.push_back(Event::PathChanged {
                id,
                local,
                remote,
                rtt,
                via,
            });
            // The network may have changed under our signaling connection too.
            self.probe_signaling(self.now);
        } else {
            // The idle clock starts with the path (the peer was just heard: it answered).
            conn.connected_at = Some(self.now);
            conn.last_heard = self.now;
            if let Some(session) = conn.session {
                conn.stream = if conn.transport == Transport::Quic {
                    let opening = quic::Opening {
                        key: &self.config.key,
                        cert: self.quic_cert.clone(),
                        peer: conn.peer,
                        service: conn.service,
                        fingerprint: conn.remote.as_ref().and_then(|d| d.quic),
                        caller: !conn.passive,
                        seed,
                        // The node's own idle timeout reports a silent peer first.
                        idle_timeout: self.config.idle_timeout + Duration::from_secs(15),
                    };
                    quic::Quic::new(opening, self.now).map(|q| transport::Stream::Quic(Box::new(q)))
                } else if conn.transport == Transport::Rtc {
                    self.rtc_identity.as_ref().and_then(|identity| {
                        let opening = rtc::Opening {
                            identity,
                            fingerprint: conn.remote.as_ref().and_then(|d| d.rtc),
                            session,
                            caller: !conn.passive,
                        };
                        rtc::Rtc::new(opening, self.now)
                            .map(|r| transport::Stream::Rtc(Box::new(r)))
                    })
                } else {
                    transport::Stream::new(&conn.transport, session, !conn.passive, seed, self.now)
                };
            }
            self.events.push_back(Event::Connected {
                id,
                peer: conn.peer,
                service: conn.service,
                passive: conn.passive,
                local,
                remote,
                rtt,
                via,
            });
            for data in std::mem::take(&mut conn.early) {
                self.events.push_back(Event::Data { id, data });
            }
        }
    }

    /// A sealed datagram (on a UDP path, through TURN, or over signaling): opened with the
    /// keys of the connection its tag names, and handled. Whether it was one (and so taken);
    /// what does not open is dropped and counted. `direct` is the (our socket, the sender's
    /// address) it arrived on over UDP, `None` through a relay: a datagram that opens tells
    /// the agent where the peer is now (see [`Agent::heard_from`]).
    fn deliver(
        &mut self,
        now: Instant,
        payload: &[u8],
        direct: Option<(SocketAddr, SocketAddr)>,
    ) -> bool {
        if let Some((tag, packet)) = seal::quic_of(payload) {
            self.deliver_quic(now, tag, packet, direct);
            return true;
        }
        let Some(tag) = seal::tag_of(payload) else {
            return false;
        };
        let Some(conn) = self.by_tag.get(&tag).and_then(|id| self.conns.get_mut(id)) else {
            if !self.linger_deliver(tag, payload, direct) {
                self.counters.stray += 1;
            }
            return true;
        };
        let Some(keys) = &mut conn.keys else {
            self.counters.stray += 1;
            return true;
        };
        // Opened into the node's buffer, reused: a transport's packet is read from there.
        let mut opened = std::mem::take(&mut self.opened);
        let kind = keys.open_into(payload, &mut opened);
        let kind = match kind {
            Ok(kind) => kind,
            Err(refused) => {
                match refused {
                    seal::Refused::Forged => self.counters.forged += 1,
                    seal::Refused::Replayed => self.counters.replayed += 1,
                }
                self.opened = opened;
                return true;
            }
        };
        let message = opened.get(1..).unwrap_or_default();
        let id = conn.id;
        conn.heard(now);
        if let (Some((local, source)), Some(agent)) = (direct, conn.agent_mut()) {
            agent.heard_from(now, local, source);
        }
        match kind {
            seal::Kind::Data => {
                conn.received.add(now, message.len());
                if conn.connected() {
                    self.events.push_back(Event::Data {
                        id,
                        data: message.to_vec(),
                    });
                } else if conn.early.len() < conn::EARLY_DATA_MAX {
                    // The peer selected first and sent at once: held for `Connected`.
                    conn.early.push(message.to_vec());
                } else {
                    self.counters.early_data_dropped += 1;
                }
            }
            seal::Kind::Close => match parse_close(message) {
                Some((code, reason)) => self.closed_by_peer(now, id, code, reason),
                None => self.counters.forged += 1,
            },
            // A close of ours is acknowledged while the connection is still here only in a
            // race (both closing at once): the record that waits for it is not there yet.
            seal::Kind::CloseAck => {}
            seal::Kind::Probe => self.echo(now, id),
            seal::Kind::Echo => self.echoed(now, id),
            seal::Kind::Transport => {
                // Early when there is no stream: the peer's path came up a moment before
                // ours. Its stream retransmits.
                if let Some(stream) = &mut conn.stream {
                    if !stream.handle_packet(now, message) {
                        self.counters.transport_malformed += 1;
                    }
                    self.opened = opened;
                    self.pump_streams(now, Some(id));
                    return true;
                }
            }
        }
        self.opened = opened;
        true
    }

    /// A packet behind a session tag (QUIC's, or an RTC connection's DTLS application data):
    /// handed to that connection's stream, which authenticates it (or drops it). Stray and
    /// malformed ones are counted.
    fn deliver_quic(
        &mut self,
        now: Instant,
        tag: [u8; 8],
        packet: &[u8],
        direct: Option<(SocketAddr, SocketAddr)>,
    ) {
        let Some(conn) = self.by_tag.get(&tag).and_then(|id| self.conns.get_mut(id)) else {
            self.counters.stray += 1;
            return;
        };
        let Some(stream) = conn.stream.as_mut().filter(|s| s.protects_itself(packet)) else {
            // Early (the peer's path came up a moment before ours: QUIC sends again), not a
            // QUIC connection, or an RTC connection's datagram that must come sealed.
            self.counters.stray += 1;
            return;
        };
        if !stream.handle_packet(now, packet) {
            self.counters.transport_malformed += 1;
            return;
        }
        // The tag is known only to the peers and the path; QUIC drops what it cannot open.
        conn.heard(now);
        // Whether quinn-proto opened it is not told; a source that moves is followed only
        // after the peer answers a check there, which nobody else can.
        if let (Some((local, source)), Some(agent)) = (direct, conn.agent_mut()) {
            agent.heard_from(now, local, source);
        }
        let id = conn.id;
        if self.batch_more {
            if !self.quic_unpumped.contains(&id) {
                self.quic_unpumped.push(id);
            }
        } else {
            self.pump_streams(now, Some(id));
        }
    }

    /// The QUIC connections a batch of datagrams left unpumped (see `quic_unpumped`).
    fn pump_unpumped(&mut self, now: Instant) {
        for id in std::mem::take(&mut self.quic_unpumped) {
            self.pump_streams(now, Some(id));
        }
    }

    /// Moves what the streams of `only` that connection (after a send or a datagram for it),
    /// or of every connection (after a timeout), have to say: their datagrams (sealed, onto
    /// each connection's path), their messages (as [`Event::Data`]) and their ends. One
    /// connection's traffic never walks all the others.
    fn pump_streams(&mut self, now: Instant, only: Option<ConnectionId>) {
        let mut ended = Vec::new();
        let mut opened = Vec::new();
        let mut peer_closed = Vec::new();
        let mut browser_failed = Vec::new();
        let conns = match only {
            Some(id) => self.conns.range_mut(id..=id),
            None => self.conns.range_mut(..),
        };
        for (_, conn) in conns {
            let path = conn.agent().and_then(Agent::data_path);
            let relay = match (conn.signal_relay, conn.session) {
                (Some(_), Some(session)) if path.is_none() => Some(session),
                _ => None,
            };
            let Some(stream) = &mut conn.stream else {
                continue;
            };
            let raw = matches!(stream, transport::Stream::Rtc(r) if r.is_raw());
            let byte_stream = matches!(stream, transport::Stream::Utp(_));
            let connected = conn.connected_at.is_some();
            for happened in stream.poll() {
                match happened {
                    transport::Happened::Opened => opened.push(conn.id),
                    transport::Happened::Data(data) => {
                        conn.received.add(now, data.len());
                        // uTP is a byte stream whose chunks need not match the sends: bytes
                        // that arrive while the last chunk waits in the queue join it, so a
                        // driver that takes the events after a batch of datagrams hands the
                        // application one event for the batch, not one per datagram.
                        if byte_stream
                            && let Some(Event::Data { id, data: last }) = self.events.back_mut()
                            && *id == conn.id
                            && last.len() + data.len() <= MAX_STREAM_CHUNK
                        {
                            last.extend_from_slice(&data);
                        } else {
                            self.events.push_back(Event::Data { id: conn.id, data });
                        }
                    }
                    transport::Happened::CloseDone => ended.push((conn.id, None)),
                    // Closes that cross: the peer's close reached us while ours was under
                    // way, so ours is done too (KCP then ends `Peer`, never `Local`, and both
                    // sides would hold the connection for ever waiting for the other).
                    transport::Happened::PeerClosed if conn.closing.is_some() => {
                        ended.push((conn.id, None));
                    }
                    // A browser closes its channel and nothing follows (no sealed close).
                    transport::Happened::PeerClosed if raw => peer_closed.push(conn.id),
                    transport::Happened::PeerClosed => {}
                    transport::Happened::Dead if raw && !connected => {
                        browser_failed.push(conn.id);
                    }
                    transport::Happened::Dead => {
                        ended.push((conn.id, Some(CloseReason::TransportFailed)));
                    }
                }
            }
            if raw {
                if conn.stream_blocked && stream.has_room() {
                    conn.stream_blocked = false;
                    self.events.push_back(Event::Writable);
                }
                if let transport::Stream::Rtc(rtc) = stream {
                    let mut raw_buf = [0u8; 2048];
                    while let Some(t) = rtc.poll_transmit_raw(now, &mut raw_buf) {
                        let ip = t.destination.ip();
                        if !self.ledger.allow(now, ip, self.config.probe_budget) {
                            self.counters.probes_withheld += 1;
                            continue;
                        }
                        let local = t.source.unwrap_or(self.config.base);
                        self.outgoing
                            .push_back((local, t.destination, raw_buf[..t.len].to_vec()));
                    }
                }
                continue;
            }
            let Some(keys) = &mut conn.keys else {
                continue;
            };
            if conn.stream_blocked && stream.has_room() {
                conn.stream_blocked = false;
                self.events.push_back(Event::Writable);
            }
            let quic = stream.is_quic();
            // The transport writes its packet where the seal wants it, in a buffer of a
            // datagram already sent; the seal works in place.
            let at = if quic {
                seal::QUIC_PACKET_AT
            } else {
                seal::PAYLOAD_AT
            };
            loop {
                let mut sealed = self
                    .spare
                    .pop()
                    .unwrap_or_else(|| Vec::with_capacity(SPARE_CAPACITY));
                // Only what the last datagram did not fill is zeroed.
                sealed.resize(at + MAX_DATAGRAM + 1, 0);
                let Some(n) = stream.poll_transmit(now, &mut sealed[at..]) else {
                    self.spare.push(sealed);
                    break;
                };
                sealed.truncate(at + n);
                if quic {
                    keys.tag_quic_in_place(&mut sealed);
                } else if stream.protects_itself(&sealed[at..]) {
                    // An RTC connection's DTLS application data: behind the tag only, as
                    // QUIC's packets are (`rtc.rs` says why that is safe).
                    sealed.copy_within(at.., seal::QUIC_PACKET_AT);
                    sealed.truncate(seal::QUIC_PACKET_AT + n);
                    keys.tag_quic_in_place(&mut sealed);
                } else {
                    keys.seal_in_place(seal::Kind::Transport, &mut sealed);
                }
                if let Some((local, remote)) = path {
                    self.outgoing.push_back((local, remote, sealed));
                    if conn.path == Some(Via::Direct) {
                        conn.awaiting.get_or_insert(now);
                    }
                } else if let Some(session) = relay {
                    if self.client.frames_waiting() >= MAX_RELAY_FRAMES {
                        self.counters.relay_frames_dropped += 1;
                    } else {
                        let _ = self.client.relay(session, &sealed);
                    }
                    recycle(&mut self.spare, sealed);
                } else {
                    // With no path at all the datagram is lost, as on a path that drops it:
                    // the stream retransmits.
                    recycle(&mut self.spare, sealed);
                }
            }
        }
        for id in opened {
            self.browser_opened(id);
        }
        for id in browser_failed {
            self.tell_peer(id, REFUSED_TRANSPORT, "WebRTC connection failed");
            self.end(now, id, End::Failed(FailReason::BrowserFailed));
        }
        for id in peer_closed {
            self.end(
                now,
                id,
                End::Closed {
                    reason: CloseReason::Application {
                        code: 0,
                        reason: "the browser closed the channel".into(),
                    },
                    by_peer: true,
                },
            );
        }
        for (id, failure) in ended {
            match failure {
                Some(reason) => self.end(
                    now,
                    id,
                    End::Closed {
                        reason,
                        by_peer: false,
                    },
                ),
                None => {
                    let Some((code, reason)) =
                        self.conns.get_mut(&id).and_then(|c| c.closing.take())
                    else {
                        continue;
                    };
                    self.tell_peer(id, code, &reason);
                    self.end(
                        now,
                        id,
                        End::Closed {
                            reason: CloseReason::Application { code, reason },
                            by_peer: false,
                        },
                    );
                }
            }
        }
    }

    /// A browser's channel opened: the connection is up, straight to the browser's address.
    fn browser_opened(&mut self, id: ConnectionId) {
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(transport::Stream::Rtc(rtc)) = &conn.stream else {
            return;
        };
        let (local, remote) = rtc.path();
        conn.path = Some(Via::Direct);
        conn.connected_at = Some(self.now);
        conn.last_heard = self.now;
        self.events.push_back(Event::Connected {
            id,
            peer: conn.peer,
            service: conn.service,
            passive: conn.passive,
            local,
            remote,
            rtt: Duration::ZERO,
            via: Via::Direct,
        });
    }

    /// The peer ended the connection with `code` and `reason`.
    fn closed_by_peer(&mut self, now: Instant, id: ConnectionId, code: u32, reason: String) {
        let Some(conn) = self.conns.get(&id) else {
            return;
        };
        if !conn.connected() && !conn.passive && matches!(code, REFUSED_BUSY | REFUSED_FULL) {
            // The peer's node is at a limit, not unwilling: try again a little later.
            self.retry_offer(now, id, FailReason::Refused { code, reason });
            return;
        }
        let path = conn.agent().and_then(Agent::data_path);
        let end = if conn.connected() {
            if let Some(conn) = self.conns.get_mut(&id) {
                // The peer's close ends the session on the server (sent with the sealed one):
                // nothing to close there on release.
                if let Some(session) = conn.session.take() {
                    self.by_session.remove(&session);
                }
                // The closer sends its close again until it hears this (see `linger`).
                if let (Some(keys), Some((local, remote))) = (&mut conn.keys, path) {
                    let ack = keys.seal(seal::Kind::CloseAck, &[]);
                    self.outgoing.push_back((local, remote, ack));
                    conn.close_role = Some(linger::Role::Acker);
                }
            }
            End::Closed {
                reason: CloseReason::Application { code, reason },
                by_peer: true,
            }
        } else if conn.passive {
            End::Failed(FailReason::Cancelled { code, reason })
        } else {
            End::Failed(FailReason::Refused { code, reason })
        };
        self.end(now, id, end);
    }

    /// A server or peer limit refused our offer (`reason`): it goes again, as a new session,
    /// after a back-off of [`RETRY_FIRST`] doubling up to [`RETRY_MAX`], each drawn at random
    /// from its upper half so that the many callers a limit turned away do not all come
    /// back at once. The connection fails with `reason` only when the retries are spent:
    /// [`MAX_OFFERS`] offers, or a next one that would go after the connect timeout.
    pub(super) fn retry_offer(&mut self, now: Instant, id: ConnectionId, reason: FailReason) {
        let (jitter, ufrag, exchange) = (self.next_random(), self.ufrag(), self.exchange());
        let deadline = self.config.connect_timeout;
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        let doublings = conn.offers.saturating_sub(1).min(16);
        let ceiling = RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX);
        let half = ceiling / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
        let at = now + half + Duration::from_micros(jitter % spread);
        if conn.passive || conn.offers >= MAX_OFFERS || at >= conn.created + deadline {
            self.end(now, id, End::Failed(reason));
            return;
        }
        if let Phase::Offered { request } = conn.phase {
            self.by_request.remove(&request);
        }
        if let Some(session) = conn.session.take() {
            self.by_session.remove(&session);
        }
        if let Some(keys) = conn.keys.take() {
            self.by_tag.remove(&keys.recv_tag);
        }
        // A new session owes nothing to the refused one: fresh credentials and key exchange.
        conn.remote = None;
        conn.remote_key = None;
        conn.ufrag = ufrag;
        conn.exchange = exchange;
        conn.phase = Phase::Retrying { at };
    }

    /// Every deadline the node has armed.
    fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        let fixed = [
            (!self.started).then_some(self.created),
            self.client.poll_timeout(),
            self.turn.as_ref().and_then(SansIo::poll_timeout),
            self.discovery.as_ref().and_then(SansIo::poll_timeout),
            self.ranker.as_ref().and_then(SansIo::poll_timeout),
            self.refresh
                .as_ref()
                .filter(|r| r.mapped.is_none())
                .map(|r| r.probe.next_at),
            self.watch.as_ref().map(|w| w.next_at),
            self.port_mapping_deadline(),
            self.relay_wait_until,
            self.relay_retry_at,
            self.signal_deadline(),
            self.signal
                .paced_until(self.client.frames_waiting(), self.signal_rate()),
            // Due at once: a batch left QUIC connections unpumped.
            (!self.quic_unpumped.is_empty()).then_some(self.now),
        ];
        let (connect, idle) = (self.config.connect_timeout, self.config.idle_timeout);
        fixed
            .into_iter()
            .flatten()
            .chain(
                self.conns.values().flat_map(move |c| {
                    c.timers().chain(std::iter::once(c.deadline(connect, idle)))
                }),
            )
            .chain(self.linger_deadlines())
    }

    /// A direct path that went silent under our stream's traffic (see `conn::SILENCE`): our
    /// NAT may have rebound or forgotten our flow, or we moved to another network. The peer
    /// cannot follow a new address of ours that its NAT filters until it sends there, and it
    /// can only learn the address from us: the keepalive's Binding to the STUN server goes at
    /// once rather than at its next interval, and a new mapping it finds is trickled to every
    /// peer (`handle_watch_answer`), whose agent checks it (RFC 8445 §7.2.5.3's triggered
    /// checks; our own side opens the flow with our traffic), the agent suspects the path
    /// (`Agent::suspect`: the relay carries the connection if the path does not answer at
    /// once), and the TURN allocation is refreshed. Once per silence.
    fn silence(&mut self, now: Instant) {
        let mut any = false;
        for conn in self.conns.values_mut() {
            if conn.silence_at().is_some_and(|t| t <= now) {
                conn.silent = true;
                any = true;
                if let Some(agent) = conn.agent_mut() {
                    agent.suspect(now);
                }
            }
        }
        if any {
            self.probe_signaling(now);
            self.regather(now);
            // The allocation's flow through our NAT may be gone too: the relay then carries
            // nothing to us (our NAT filters the server until we send to it). A Refresh opens
            // it again, or tells that the allocation went with our old mapping (a 437, and a
            // new allocation follows). RFC 8656 §7.
            if let Some(turn) = &mut self.turn {
                let _ = turn.refresh_now(now);
            }
            self.drain_turn(now);
        }
    }

    /// Ends the connections whose connect or idle timeout passed.
    fn expire(&mut self, now: Instant) {
        let (connect, idle) = (self.config.connect_timeout, self.config.idle_timeout);
        let due: Vec<(ConnectionId, bool, bool)> = self
            .conns
            .values()
            .filter(|c| c.deadline(connect, idle) <= now)
            .map(|c| (c.id, c.connected(), c.gave_up))
            .collect();
        for (id, connected, gave_up) in due {
            if connected {
                self.tell_peer(id, CLOSED_IDLE, "idle timeout");
                let reason = CloseReason::IdleTimeout;
                self.end(
                    now,
                    id,
                    End::Closed {
                        reason,
                        by_peer: false,
                    },
                );
            } else {
                self.tell_peer(id, CLOSED_TIMEOUT, "connect timeout");
                let reason = if gave_up {
                    FailReason::NoPath
                } else {
                    FailReason::TimedOut
                };
                self.end(now, id, End::Failed(reason));
            }
        }
    }

    /// Hands discovery's events on. The provisional report is enough to offer and answer
    /// with (fast start: the tests still running assume the worst); once discovery is done the
    /// machine goes, and so do the sockets it sampled ports from.
    fn drain_discovery(&mut self, now: Instant) {
        let Some(discovery) = &mut self.discovery else {
            return;
        };
        let mut done = false;
        let mut fresh = None;
        while let Some(event) = discovery.poll_event() {
            match event {
                discovery::Event::Provisional(report) => fresh = Some(report),
                discovery::Event::Done(report) => {
                    fresh = Some(report);
                    done = true;
                }
                _ => {}
            }
        }
        let Some(report) = fresh else {
            return;
        };
        let before = self.report.replace(report);
        // A mapping waiting for our server-reflexive IP can be verified now.
        self.drain_port_mapping(now);
        let report = self.report.as_ref().expect("just set");
        match before {
            None => {
                self.events.push_back(Event::Ready {
                    behaviour: report.behaviour,
                    public: report.mapped,
                });
                if self.config.turn.is_some() && !self.turn_sent {
                    self.relay_wait_until = Some(now + RELAY_WAIT);
                }
                // The mapping we advertise dates from test I: keep it and watch it from now
                // (its Bindings are told apart from discovery's by transaction ID).
                self.watch_from(now + self.config.keepalive);
                if let Some((username, password)) = self.pending_relay.take() {
                    self.allocate(now, username, password);
                }
            }
            Some(b) if b.behaviour != report.behaviour => {
                let behaviour = report.behaviour;
                self.events.push_back(Event::NatUpdated { behaviour });
                // "UDP blocked" was provisional (test I unanswered for a while on a lossy
                // link) and an answer came: our offers and answers went without a
                // server-reflexive candidate, so it goes to every peer now, ahead of the
                // update that has them plan again.
                if let (Behaviour::UdpBlocked, Some(mapped), true) =
                    (b.behaviour, report.mapped, self.config.direct)
                {
                    let srflx = fog_ice::candidate::Candidate::new(
                        fog_ice::candidate::Kind::ServerReflexive,
                        mapped,
                    );
                    self.changed(vec![srflx], Vec::new());
                }
                self.behaviour_changed(now);
            }
            Some(_) => {}
        }
        if done {
            let report = self.report.as_ref().expect("just set");
            if let (true, Some(public)) = (report.is_complete(), report.mapped) {
                self.events.push_back(Event::NatKnown(KnownNat {
                    stun: self.config.stun,
                    local: self.config.base.ip(),
                    public: public.ip(),
                    behaviour: report.behaviour,
                }));
            }
            self.discovery = None;
            let base = self.config.base;
            for port in discovery_config(&self.config, self.discovery_seed).local_ports() {
                if port != base.port() {
                    let socket = SocketAddr::new(base.ip(), port);
                    self.socket_requests
                        .push_back(SocketRequest::Unbind(socket));
                }
            }
        }
        self.progress(now);
    }

    /// Our behaviour changed after connections were offered or answered with the old one:
    /// their peers are told (signed), and those still without a path plan again.
    fn behaviour_changed(&mut self, now: Instant) {
        let Some(nat) = self.behaviour() else {
            return;
        };
        let wire = fog_signal::msg::NatBehaviour::from(nat);
        let me = self.peer_id();
        let told: Vec<(ConnectionId, SessionId, PeerId)> = self
            .conns
            .values()
            .filter(|c| !c.passive || c.agent().is_some())
            .filter_map(|c| c.session.map(|s| (c.id, s, c.peer)))
            .collect();
        for (id, session, peer) in told {
            let transcript = seal::nat_transcript(me, peer, session, &wire);
            let signature = fog_signal::msg::Sig(self.config.key.sign(&transcript));
            // A session the server forgot refuses it; the peer keeps the old plan.
            let _ = self.client.update_nat(session, wire, signature);
            self.replan(now, id);
        }
    }

    /// Builds the agent of `id` again from both sides' behaviours as known now, if it has no
    /// path yet. A connection that has one (even relayed) keeps its agent, whose later rounds
    /// go on; one whose agent is punching gets the new plan when that round ends without a
    /// path. Building the agent again in the middle of a round throws away checks in flight:
    /// in the simulator, a restricted cone whose update came 0.3 s into a birthday round with
    /// a random-port peer found its direct path 5.6 s later instead of 0.1 s, while the plan
    /// that assumed the worst works for every pair of the NAT matrix.
    fn replan(&mut self, now: Instant, id: ConnectionId) {
        let udp = self.behaviour().is_some_and(|b| b != Behaviour::UdpBlocked);
        let Some(conn) = self.conns.get_mut(&id) else {
            return;
        };
        // A plan made while one side assumed UDP blocked has no direct route, and a
        // connection on it is connected only through a relay: once the reading is corrected
        // it is planned again, or it would stay on the relay for good.
        let blind = conn.signal_relay.is_some()
            && conn.agent().is_some_and(|a| !a.plan().is_direct())
            && udp
            && conn
                .remote
                .as_ref()
                .and_then(|r| r.nat)
                .is_some_and(|n| Behaviour::from(n) != Behaviour::UdpBlocked);
        if conn.connected() && !blind {
            conn.replan = false;
            return;
        }
        let Some(punching) = conn.agent().map(Agent::punching) else {
            // Not punching yet: the agent, when built, takes the behaviours as they are then.
            return;
        };
        // A blind plan's round punches nothing: no check in flight is worth its wait.
        let punching = punching && !blind;
        conn.replan = punching;
        if punching {
            return;
        }
        let sockets = conn.agent_mut().map(|a| {
            let mut sockets = a.take_released();
            sockets.extend_from_slice(a.birthday_sockets());
            sockets
        });
        for socket in sockets.into_iter().flatten() {
            self.socket_requests
                .push_back(SocketRequest::Unbind(socket));
        }
        self.counters.replans += 1;
        self.build_agent(now, id);
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
        self.discovery = Some(Discovery::new(discovery_config(
            &self.config,
            self.discovery_seed,
        )));
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
        // Not while discovery reads the port pattern: the allocation's binding (a new
        // destination from the base) would land between two port samples.
        if self.ranker.is_some() || (self.discovery.is_some() && self.report.is_none()) {
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
}

/// 32 bytes from the node's generator.
fn random_bytes(rng: &mut ChaCha20Rng) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rng.fill_bytes(&mut bytes);
    bytes
}

/// The signaling client of a node, seeded from `seed`.
fn signal_client(config: &NodeConfig, seed: [u8; 32]) -> Client {
    let mut client_config = ClientConfig::new(config.key.clone(), config.realm.clone(), seed);
    client_config.alias = config.alias.clone();
    client_config.server = config.server_key;
    Client::new(client_config)
}

/// Discovery from the base port against the configured STUN server.
fn discovery_config(config: &NodeConfig, seed: u64) -> DiscoveryConfig {
    let mut d = DiscoveryConfig::new(config.stun, seed);
    d.first_port = config.base.port();
    d.local_ip = config.base.ip();
    d.port_samples = config.port_samples;
    d.hairpinning = config.hairpinning;
    d.pacing = config.discovery_pacing;
    d.assume_blocked_after = config.assume_udp_blocked_after;
    d.remembered = config
        .known_nats
        .iter()
        .find(|k| k.stun == config.stun && k.local == config.base.ip())
        .map(|k| discovery::Remembered {
            public: k.public,
            behaviour: k.behaviour,
        });
    d
}

/// `text` cut to at most `max` bytes at a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// A sealed close's (code, reason), or `None` if it is not a well-formed one.
/// The most buffers of sent datagrams the node keeps for the next ones: a KCP flush's or a
/// QUIC window's burst (128 × 1.4 KB, about 180 KiB, kept only after such a burst).
const MAX_SPARE: usize = 128;

/// What a buffer in [`Node::spare`] holds: the largest datagram a transport writes, sealed.
const SPARE_CAPACITY: usize = seal::OVERHEAD + MAX_DATAGRAM + 1;

/// Keeps the buffer of a datagram just sent for the next one, if it is one of ours (large
/// enough) and the pool has room.
fn recycle(spare: &mut Vec<Vec<u8>>, buffer: Vec<u8>) {
    if spare.len() < MAX_SPARE && buffer.capacity() >= SPARE_CAPACITY {
        spare.push(buffer);
    }
}

fn parse_close(message: &[u8]) -> Option<(u32, String)> {
    let code = u32::from_be_bytes(message.get(..4)?.try_into().ok()?);
    let reason = &message[4..];
    let reason = &reason[..reason.len().min(fog_signal::msg::MAX_CLOSE_REASON)];
    Some((code, String::from_utf8_lossy(reason).into_owned()))
}

impl SansIo for Node {
    type Event = Event;

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        self.now = self.now.max(now);
        // The port mapper's answers from the gateway first: SSDP's are text that the first
        // byte would take for QUIC.
        if self.handle_port_mapping_packet(now, &packet) {
            return;
        }
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
            // Its own answers only: after the provisional report, the agents' checks share
            // the base port with the tests still running.
            if discovery.owns(&packet) {
                discovery.handle_packet(now, packet);
                self.drain_discovery(now);
                return;
            }
        }
        if self.handle_refresh_answer(now, &packet) || self.handle_watch_answer(now, &packet) {
            return;
        }
        if self.give_browser(now, &packet) {
            return;
        }
        if self.deliver(now, packet.payload, Some((packet.local, packet.source))) {
            return;
        }
        self.give_agent(now, packet);
    }

    fn handle_packet_of_batch(&mut self, now: Instant, packet: Receive<'_>, more: bool) {
        self.batch_more = more;
        self.handle_packet(now, packet);
        self.batch_more = false;
        if !more {
            self.pump_unpumped(now);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        // A batch whose last datagram never came (or was not accepted): every stream is
        // pumped below.
        self.quic_unpumped.clear();
        if !self.started {
            self.started = true;
            self.signal.start();
            self.start_port_mapping(now);
        }
        self.port_mapping_timeout(now);
        self.signal_timeout(now);
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
        self.signal_relay_timeouts(now);
        self.linger_timeouts(now);
        for conn in self.conns.values_mut() {
            if let Some(stream) = &mut conn.stream {
                stream.handle_timeout(now);
            }
        }
        self.pump_streams(now, None);
        for conn in self.conns.values_mut() {
            let quiet_over = conn.quiet_until.is_some_and(|t| now >= t);
            if quiet_over {
                conn.quiet_until = None;
            }
            if let Some(agent) = conn.agent_mut() {
                if quiet_over {
                    agent.set_quiet(false);
                }
                agent.handle_timeout(now);
                // A birthday round that found nothing gives its sockets back at once.
                for socket in agent.take_released() {
                    self.socket_requests
                        .push_back(SocketRequest::Unbind(socket));
                }
            }
        }
        self.drain_agents();
        self.silence(now);
        let due: Vec<ConnectionId> = self
            .conns
            .values()
            .filter(|c| c.replan && c.agent().is_some_and(|a| !a.punching()))
            .map(|c| c.id)
            .collect();
        for id in due {
            self.replan(now, id);
        }
        self.expire(now);
        self.relay_wait_until = self.relay_wait_until.filter(|&t| now < t);
        self.relay_retry(now);
        self.progress(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.now = self.now.max(now);
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
        if let Some(t) = self.port_mapping_transmit(now, buf) {
            return Some(t);
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
        if self.blocked
            && self.outgoing.len() <= MAX_QUEUED / 2
            && self.client.frames_waiting() <= MAX_RELAY_FRAMES / 2
        {
            self.blocked = false;
            self.events.push_back(Event::Writable);
        }
        while let Some((local, remote, bytes)) = self.outgoing.pop_front() {
            match (self.relayed, &mut self.turn) {
                (Some(relayed), Some(turn)) if local == relayed => {
                    let before = turn.permission_count();
                    let _ = turn.create_permission(now, remote.ip());
                    // UDP promises nothing, but what the relay cannot take is counted.
                    if turn.send_to(now, remote, &bytes).is_err() {
                        self.counters.relay_send_errors += 1;
                    }
                    recycle(&mut self.spare, bytes);
                    // The last datagram of a connection already released (its sealed close)
                    // goes, but keeps no permission alive that no connection uses (found by
                    // the chaos run). Only a permission this datagram created is looked at.
                    if turn.permission_count() > before
                        && !self
                            .conns
                            .values()
                            .filter_map(Conn::agent)
                            .any(|a| a.relay_peers().any(|p| p.ip() == remote.ip()))
                    {
                        turn.release_permission(remote.ip());
                    }
                }
                _ => {
                    let len = bytes.len().min(buf.len());
                    buf[..len].copy_from_slice(&bytes[..len]);
                    recycle(&mut self.spare, bytes);
                    return Some(Transmit::new(remote, len).from_source(local));
                }
            }
        }
        // What the agents send from our relayed address goes through the TURN client.
        for conn in self.conns.values_mut() {
            let Some(agent) = conn.agent_mut() else {
                continue;
            };
            while let Some(t) = agent.poll_transmit(now, buf) {
                if !self
                    .ledger
                    .allow(now, t.destination.ip(), self.config.probe_budget)
                {
                    self.counters.probes_withheld += 1;
                    continue;
                }
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
                if !self.turn_sent {
                    self.turn_sent = true;
                    self.relay_wait_until = None;
                    // A prediction that waited for this binding may go now.
                    self.progress(now);
                }
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
        // A driver takes socket requests before transmits: an unbind waits (and the requests
        // after it, to keep their order) while a datagram from that socket is still queued,
        // such as the sealed close of the connection that held it (found by the chaos run).
        if let Some(SocketRequest::Unbind(socket)) = self.socket_requests.front() {
            if self.outgoing.iter().any(|(local, _, _)| local == socket) {
                return None;
            }
        }
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
        // A deadline computed from state older than the last input (the signaling pacer's
        // refill after a `send`, say) is due now, never in the past: the driving contract has
        // no past deadlines (the chaos model checks it).
        self.deadlines().min().map(|t| t.max(self.now))
    }
}
