//! What a [`Node`](super::Node) reports, and the handles and errors of its API.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use fog_core::nat::Behaviour;
use fog_ice::candidate::Candidate;
use fog_signal::PeerId;
use fog_signal::msg::Transport;

/// A connection's handle: given by [`Node::connect`](super::Node::connect) at once, or by
/// [`Event::Incoming`] on the answering side, and carried by every event about it. Never
/// reused by one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId(pub(crate) u64);

impl ConnectionId {
    /// The number behind the handle (for logs and foreign interfaces).
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for ConnectionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

/// How a connection's path goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
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

    /// A lowercase name: `direct`, `turn`, `signaling`.
    pub fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Turn => "turn",
            Via::Signaling => "signaling",
        }
    }
}

/// Why a connection that never had a path ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum FailReason {
    /// The signaling server knows no such peer online.
    PeerOffline,
    /// The peer refused the offer ([`Node::refuse`](super::Node::refuse)), with its code and
    /// reason; [`REFUSED_FULL`](super::REFUSED_FULL) when it had no room.
    Refused {
        /// The peer's code.
        code: u32,
        /// The peer's reason, for people.
        reason: String,
    },
    /// The offering peer gave up before the connection had a path (its `close`), with its code
    /// and reason. A caller that closes the moment it is connected may be heard so too: it
    /// selects the path on our answer to its check, a round trip before our own check of the
    /// path comes back (RFC 8445 §7.3.1.5), and its close can overtake that.
    Cancelled {
        /// The peer's code.
        code: u32,
        /// The peer's reason, for people.
        reason: String,
    },
    /// No path within [`NodeConfig::connect_timeout`](super::NodeConfig::connect_timeout)
    /// (or, for an incoming connection, no decision within it).
    TimedOut,
    /// Punching found no direct path and no relay was usable before the timeout.
    NoPath,
    /// A browser's WebRTC peer failed before its channel opened: no ICE check came, or its
    /// DTLS certificate was not the one it signed into its offer
    /// ([`Transport::Browser`](super::Transport::Browser)).
    BrowserFailed,
    /// The signaling server ended the session before it had a path: the peer left, or the
    /// offer went unanswered for the server's offer timeout.
    SessionEnded {
        /// The server's reason (`peer left`, `unanswered`).
        reason: String,
    },
    /// The connection to the signaling server dropped while the offer or answer was under way.
    SignalingLost,
    /// A limit of the signaling server: too many unanswered offers to or from this peer, or
    /// too many frames per second.
    ServerLimit {
        /// The server's error code (3xxx, see `docs/signaling.md`).
        code: u16,
        /// The server's message.
        message: String,
    },
    /// Another error from the signaling server about the offer.
    Signaling {
        /// The server's error code (see `docs/signaling.md`).
        code: u16,
        /// The server's message.
        message: String,
    },
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::PeerOffline => f.write_str("the peer is not online"),
            FailReason::Refused { code, reason } => {
                write!(f, "refused by the peer (code {code}: {reason})")
            }
            FailReason::Cancelled { code, reason } => {
                write!(f, "cancelled by the peer (code {code}: {reason})")
            }
            FailReason::TimedOut => f.write_str("no path before the connect timeout"),
            FailReason::NoPath => f.write_str("no direct path and no relay"),
            FailReason::BrowserFailed => f.write_str(
                "the browser's WebRTC connection failed (no check, or a certificate other than the signed one)",
            ),
            FailReason::SessionEnded { reason } => {
                write!(f, "the signaling server ended the session ({reason})")
            }
            FailReason::SignalingLost => f.write_str("the signaling connection was lost"),
            FailReason::ServerLimit { code, message } => {
                write!(f, "a limit of the signaling server ({code}: {message})")
            }
            FailReason::Signaling { code, message } => {
                write!(f, "the signaling server refused ({code}: {message})")
            }
        }
    }
}

/// Why a connection that had a path ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// An application closed it ([`Node::close`](super::Node::close)): ours when the event
    /// says `by_peer: false`, the peer's otherwise.
    Application {
        /// The code given to `close`.
        code: u32,
        /// The reason given to `close`, for people.
        reason: String,
    },
    /// Nothing arrived from the peer for [`NodeConfig::idle_timeout`](super::NodeConfig::idle_timeout).
    IdleTimeout,
    /// The path went through the signaling server, and the server ended the session (the
    /// peer left it, or our own signaling connection dropped).
    SignalingLost,
    /// The connection's transport gave up: what it sent went unacknowledged too often.
    TransportFailed,
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CloseReason::Application { code, reason } => {
                write!(f, "closed (code {code}: {reason})")
            }
            CloseReason::IdleTimeout => f.write_str("nothing heard from the peer: idle timeout"),
            CloseReason::SignalingLost => {
                f.write_str("the path through the signaling server is gone")
            }
            CloseReason::TransportFailed => {
                f.write_str("the transport gave up: nothing acknowledged for too long")
            }
        }
    }
}

/// What the node reports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The node knows enough of its NAT to connect: the behaviour so far and the base
    /// socket's public address. Discovery may still be running: tests without a result yet
    /// (usually filtering, whose silence takes seconds) are assumed to have the most
    /// restrictive one, and [`Event::NatUpdated`] follows if their results differ.
    Ready {
        /// What the NAT does.
        behaviour: Behaviour,
        /// The base socket's server-reflexive address, if UDP passes.
        public: Option<SocketAddr>,
    },
    /// Discovery ended with another behaviour than [`Event::Ready`] announced (a test still
    /// running then found something less restrictive than assumed). Peers of connections are
    /// told; those without a path yet plan again.
    NatUpdated {
        /// What the NAT does.
        behaviour: Behaviour,
    },
    /// Discovery finished with every test answered or concluded: what a driver may keep for
    /// the node's next start on this network ([`NodeConfig::known_nats`](super::NodeConfig)).
    NatKnown(super::KnownNat),
    /// The signaling server accepted the node.
    SignalingUp,
    /// The signaling connection ended; the node asks for a new one
    /// ([`SignalOutput::Open`](super::SignalOutput::Open)) after a back-off. Connections with
    /// a UDP path go on.
    SignalingDown,
    /// A peer offers a connection. With [`AcceptPolicy::Ask`](super::AcceptPolicy::Ask) it
    /// waits for [`Node::accept`](super::Node::accept) or [`Node::refuse`](super::Node::refuse);
    /// with [`AcceptPolicy::All`](super::AcceptPolicy::All) it is already accepted.
    Incoming {
        /// The new connection's handle.
        id: ConnectionId,
        /// Who calls (authenticated by the signaling server).
        peer: PeerId,
        /// The service the caller asked for.
        service: u16,
        /// The transport the caller asked for (one this node runs: others are refused with
        /// [`REFUSED_TRANSPORT`](super::REFUSED_TRANSPORT) before this event).
        transport: Transport,
    },
    /// A connection has a verified path: direct, or through a relay while punching goes on.
    Connected {
        /// The connection.
        id: ConnectionId,
        /// The peer.
        peer: PeerId,
        /// The service it is for.
        service: u16,
        /// Whether we are the answering side (the peer called).
        passive: bool,
        /// Our socket (our relayed address for a path through our own allocation).
        local: SocketAddr,
        /// The peer's address on the path.
        remote: SocketAddr,
        /// The path's round trip.
        rtt: Duration,
        /// How the path goes.
        via: Via,
    },
    /// A connected connection moved to another path: up to a direct one when punching
    /// succeeds, back to the relay when the direct one dies. The connection stays.
    PathChanged {
        /// The connection.
        id: ConnectionId,
        /// Our socket.
        local: SocketAddr,
        /// The peer's address.
        remote: SocketAddr,
        /// The new path's round trip.
        rtt: Duration,
        /// How the path goes.
        via: Via,
    },
    /// A datagram from the peer of a connection (sent with [`Node::send`](super::Node::send)),
    /// never before the connection's `Connected`: the peer may select the path and send a
    /// round trip before our side selects it, and what comes meanwhile is held.
    Data {
        /// The connection.
        id: ConnectionId,
        /// The datagram.
        data: Vec<u8>,
    },
    /// A connection that never had a path ended; its handle is no longer valid.
    Failed {
        /// The connection.
        id: ConnectionId,
        /// Why.
        reason: FailReason,
    },
    /// A connection ended ([`Node::close`](super::Node::close) on either side, idle); its
    /// handle is no longer valid. Our own `close` reports it too, with `by_peer: false`.
    Closed {
        /// The connection.
        id: ConnectionId,
        /// Why.
        reason: CloseReason,
        /// Whether the peer closed it.
        by_peer: bool,
    },
    /// Punching found no direct path in time; the relayed path stays, and punching is tried
    /// again now and then.
    DirectFailed {
        /// The connection.
        id: ConnectionId,
    },
    /// A connection's path stopped answering and there is no other to move to; the connection
    /// closes at the idle timeout unless one comes back.
    PathLost {
        /// The connection.
        id: ConnectionId,
    },
    /// The send queue, full when [`Node::send`](super::Node::send) last said
    /// [`SendError::Blocked`], has room again.
    Writable,
    /// Our TURN allocation is ready: relayed candidates from now on.
    RelayReady {
        /// The relayed transport address.
        relayed: SocketAddr,
    },
    /// The answer to [`Node::lookup`](super::Node::lookup).
    LookupResult {
        /// The name asked about.
        name: String,
        /// The peer the name belongs to, if any.
        peer: Option<PeerId>,
        /// Whether it is connected to the signaling server now.
        online: bool,
    },
    /// A [`Node::lookup`](super::Node::lookup) got no answer: the signaling connection ended
    /// first.
    LookupFailed {
        /// The name asked about.
        name: String,
    },
    /// The nearest of the configured servers was measured and chosen (only with
    /// [`NodeConfig::alternatives`](super::NodeConfig::alternatives)); discovery and the relay
    /// use it.
    ServerChosen {
        /// The STUN server chosen.
        stun: SocketAddr,
        /// The TURN server that goes with it.
        turn: Option<SocketAddr>,
        /// Every STUN server's smallest RTT, in the order configured (`None`: no answer).
        rtts: Vec<(SocketAddr, Option<Duration>)>,
    },
    /// Our candidates changed: an interface address came or went
    /// ([`Node::set_interfaces`](super::Node::set_interfaces)), or the NAT mapped the base
    /// socket anew (the keepalive or [`Node::regather`](super::Node::regather) saw a new
    /// server-reflexive address). New ones were trickled to the peer of every connection.
    CandidatesChanged {
        /// Candidates that are new.
        added: Vec<Candidate>,
        /// Addresses that are no longer ours.
        removed: Vec<SocketAddr>,
    },
}

/// Why [`Node::connect`](super::Node::connect) gave no handle.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ConnectError {
    /// The peer is this node.
    SelfConnect,
    /// [`NodeConfig::max_connections`](super::NodeConfig::max_connections) are open.
    TooManyConnections {
        /// The limit.
        limit: usize,
    },
    /// This node does not run that transport.
    UnsupportedTransport(Transport),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::SelfConnect => f.write_str("a node cannot connect to itself"),
            ConnectError::TooManyConnections { limit } => {
                write!(f, "the node holds its limit of {limit} connections")
            }
            ConnectError::UnsupportedTransport(t) => {
                write!(
                    f,
                    "this node does not run the {} transport",
                    String::from(t.clone())
                )
            }
        }
    }
}

impl std::error::Error for ConnectError {}

/// Why a command about a connection (accept, refuse, close) did nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CommandError {
    /// No such connection (it ended, or the handle is not this node's).
    UnknownConnection,
    /// The connection is not an incoming one waiting for a decision.
    NotIncoming,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::UnknownConnection => f.write_str("no such connection"),
            CommandError::NotIncoming => {
                f.write_str("the connection is not an incoming one awaiting a decision")
            }
        }
    }
}

impl std::error::Error for CommandError {}

/// Why [`Node::send`](super::Node::send) did not send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SendError {
    /// No such connection.
    UnknownConnection,
    /// The connection has no path yet (wait for [`Event::Connected`]).
    NotConnected,
    /// The datagram is longer than [`MAX_DATAGRAM`](super::MAX_DATAGRAM).
    TooLong,
    /// [`MAX_QUEUED`](super::MAX_QUEUED) datagrams wait for the driver to drain the node;
    /// [`Event::Writable`] says when to send again. Nothing was queued.
    Blocked,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SendError::UnknownConnection => f.write_str("no such connection"),
            SendError::NotConnected => f.write_str("the connection has no path yet"),
            SendError::TooLong => {
                write!(f, "datagrams are at most {} bytes", super::MAX_DATAGRAM)
            }
            SendError::Blocked => f.write_str("the send queue is full; wait for Writable"),
        }
    }
}

impl std::error::Error for SendError {}

/// Why [`Node::lookup`](super::Node::lookup) did not ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LookupError {
    /// The signaling server has not accepted the node yet (wait for [`Event::SignalingUp`]).
    NotReady,
    /// [`MAX_LOOKUPS`](super::MAX_LOOKUPS) lookups are waiting for their answers.
    TooMany,
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LookupError::NotReady => f.write_str("the signaling server has not accepted us yet"),
            LookupError::TooMany => f.write_str("too many lookups waiting for answers"),
        }
    }
}

impl std::error::Error for LookupError {}

/// A connection's figures, from [`Node::stats`](super::Node::stats).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ConnectionStats {
    /// The peer.
    pub peer: PeerId,
    /// The service.
    pub service: u16,
    /// Whether we are the answering side.
    pub passive: bool,
    /// The current path: how it goes, our socket, the peer's address; `None` before the first.
    pub path: Option<(Via, SocketAddr, SocketAddr)>,
    /// The path's smoothed round trip (RFC 6298), once measured.
    pub rtt: Option<Duration>,
    /// The round trip's variance (RFC 6298 RTTVAR), once measured.
    pub rtt_var: Option<Duration>,
    /// Application bytes sent (payloads of [`Node::send`](super::Node::send)).
    pub sent_bytes: u64,
    /// Application datagrams sent.
    pub sent_datagrams: u64,
    /// Application bytes received.
    pub received_bytes: u64,
    /// Application datagrams received.
    pub received_datagrams: u64,
    /// Bytes per second sent over the last whole second.
    pub up_rate: u64,
    /// Bytes per second received over the last whole second.
    pub down_rate: u64,
    /// How long the connection has had a path; `None` before the first.
    pub connected_for: Option<Duration>,
    /// Path changes since the first path.
    pub path_changes: u32,
}

/// What a node holds, to check that ended connections leave nothing behind
/// ([`Node::footprint`](super::Node::footprint)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Footprint {
    /// Connections in any phase.
    pub connections: usize,
    /// Deadlines armed (each a reason for [`poll_timeout`](fog_core::SansIo::poll_timeout)).
    pub deadlines: usize,
    /// Sockets the node asked a driver to hold besides the base: further interfaces, the port
    /// refresh, birthday sockets.
    pub sockets: usize,
    /// TURN permissions kept alive.
    pub relay_permissions: usize,
    /// Lookups and offers waiting for the signaling server's answer.
    pub requests: usize,
    /// Application datagrams and control messages queued to send.
    pub queued: usize,
    /// Frames waiting for the signaling connection (paced under the server's rate); at most
    /// about [`MAX_RELAY_FRAMES`](crate::MAX_RELAY_FRAMES) from relayed datagrams.
    pub signal_frames: usize,
}

/// What a node dropped from the network, and why ([`Node::counters`](super::Node::counters)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Counters {
    /// Sealed datagrams for no connection of ours (an unknown or ended session's tag).
    pub stray: u64,
    /// Sealed datagrams that did not open: forged, altered, or sealed for another direction.
    pub forged: u64,
    /// Sealed datagrams seen before, or too old for the replay window.
    pub replayed: u64,
    /// Offers, answers, trickled candidates and behaviour updates whose signature did not
    /// verify (or that had none): ignored (an offer is never answered, never connected).
    pub bad_signatures: u64,
    /// Probes on the relay over signaling left unechoed by the rate limit.
    pub echoes_refused: u64,
    /// A peer's candidates beyond the 64 kept per connection (description and trickles).
    pub candidates_dropped: u64,
    /// Datagrams of ours that the TURN client could not send (no allocation any more, say).
    pub relay_send_errors: u64,
    /// Datagrams of a transport (KCP, QUIC) not put on the signaling relay because
    /// [`MAX_RELAY_FRAMES`](crate::MAX_RELAY_FRAMES) frames were already waiting for the
    /// server's rate: lost as on a congested path, and the transport sends them again.
    pub relay_frames_dropped: u64,
    /// Datagrams of our agents withheld because their destination IP had its
    /// [`probe_budget`](super::NodeConfig::probe_budget) without answering.
    pub probes_withheld: u64,
    /// Transport datagrams (sealed and genuine) that their transport could not parse.
    pub transport_malformed: u64,
    /// Agents built again because a behaviour (ours when discovery finished, or the peer's
    /// update) changed before the connection had a path.
    pub replans: u64,
    /// TURN allocations lost (a failed refresh, often after our NAT rebound us) and asked for
    /// again.
    pub relays_lost: u64,
    /// Port mappings whose probe came through, so that they were offered.
    pub port_mappings_verified: u64,
    /// Port mappings not offered: the probe through them never came, or the router's
    /// external IP is not the one the STUN server sees (another NAT upstream).
    pub port_mappings_unverified: u64,
    /// The peer's datagrams dropped because more than 64 came before our side of the path was
    /// selected (they are held until then, so that `Data` never comes before `Connected`).
    pub early_data_dropped: u64,
}

/// Why a connection took the path it took ([`Node::diagnose`](super::Node::diagnose)).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct Diagnosis {
    /// Our NAT behaviour as the plan used it.
    pub ours: Option<fog_core::nat::Behaviour>,
    /// The peer's, from its signed description (or its later update).
    pub theirs: Option<fog_core::nat::Behaviour>,
    /// What the pairing says a correct stack achieves for the two behaviours, and how
    /// (`None` before both descriptions are in).
    pub outcome: Option<fog_core::pairing::Outcome>,
    /// The plan's route, in words (`None` when relay-only).
    pub route: Option<String>,
    /// Direct paths were turned off on our side ([`NodeConfig::direct`](super::NodeConfig)).
    pub relay_only: bool,
    /// The current path, as [`ConnectionStats::path`] says.
    pub path: Option<(Via, SocketAddr, SocketAddr)>,
    /// Every candidate pair and what became of it.
    pub pairs: Vec<fog_ice::agent::PairReport>,
    /// Checks the agent sent, birthday probes included.
    pub checks_sent: u64,
}
