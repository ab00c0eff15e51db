//! Signaling in the simulator: a reliable, ordered, message-oriented channel between each node
//! and one signaling server, the way a WebSocket over TCP behaves.
//!
//! The channel runs on the simulator's event queue and clock, next to the datagrams, so a trace
//! stays deterministic and the time of every frame can be predicted from the latencies:
//!
//! - Each node reaches the server over its own [`SignalLink`]: a one-way latency, an optional
//!   jitter that never reorders (every message arrives no earlier than the one sent before it on
//!   the same direction of the same connection), an optional bandwidth, and no loss.
//! - Opening takes [`SignalLink::setup_round_trips`] round trips (TCP, TLS) and then one more for
//!   the upgrade: the server sees the connection after that many round trips plus one latency,
//!   the node one latency later. Both ends are told ([`SignalServer::handle_connect`],
//!   [`SignalNode::handle_signal_open`]).
//! - Closes travel in order behind the frames sent before them. [`Sim::signal_sever`] cuts a
//!   connection instead: frames in flight are lost, the node is told at once and the server one
//!   latency later. [`Sim::set_signal_blocked`] makes the server unreachable: an open connection
//!   is severed and a connect fails after [`SignalLink::connect_timeout`].
//!
//! The server end hosts any [`SignalServer`]: `fog_signal::server::Server` implements it, and a
//! test may host a simpler one. A node's machine takes part by implementing [`SignalNode`] next
//! to [`fog_core::SansIo`] and being installed with [`Sim::set_signal_machine`]; [`ClientNode`]
//! is such a machine that runs just a `fog_signal` client.
//!
//! Why fog-sim depends on fog-signal rather than staying generic over frames: the channel carries
//! WebSocket text frames (`String`) and the server speaks fog-signal's [`ConnId`]/[`Output`]
//! already; borrowing that vocabulary costs one dependency and saves a parallel set of types.
//! The server is still hosted through a trait, so the channel can be tested with an echo server
//! and a later composite server can be hosted too. fog-signal knows nothing of the simulator.
//!
//! ```
//! use std::time::Duration;
//! use fog_sim::{NodeId, Sim, link::LinkConfig, signal::{ClientNode, SignalLink}};
//! use fog_signal::{KeyPair, client::ClientConfig, server::{Server, ServerConfig}};
//!
//! let mut sim = Sim::new(1);
//! sim.set_signal_server(Server::new(ServerConfig::new(KeyPair::from_seed(&[9; 32]), "sim", [1; 32])));
//! let alice = sim.add_host("alice", NodeId::INTERNET, &["192.0.2.1".parse().unwrap()], LinkConfig::default());
//! let config = ClientConfig::new(KeyPair::from_seed(&[1; 32]), "sim", [2; 32]);
//! sim.set_signal_machine(alice, 4000, ClientNode::new(config, sim.epoch()));
//! sim.set_signal_link(alice, SignalLink::with_latency(Duration::from_millis(25)));
//!
//! sim.signal_connect(alice);
//! sim.run_for(Duration::from_secs(1));
//! // Open (2 × 25 ms), hello → challenge, auth → welcome: 6 one-way trips.
//! assert_eq!(sim.machine::<ClientNode>(alice).authenticated_at(), Some(sim.epoch() + Duration::from_millis(150)));
//! ```

use std::collections::VecDeque;
use std::fmt;
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use fog_signal::client::{Client, ClientConfig, Event};
use fog_signal::msg::SessionId;

pub use fog_signal::server::{ConnId, Output};

#[cfg(doc)]
use crate::Sim;

/// The path between one node and the signaling server. Both directions share it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalLink {
    /// One-way delay of every message.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per message. It never reorders: a message
    /// arrives no earlier than the one sent before it on the same direction, as over TCP.
    pub jitter: Duration,
    /// Bits per second for frames (their text bytes only); `None` for unlimited. Frames queue
    /// behind each other without limit: TCP does not drop.
    pub bandwidth_bps: Option<u64>,
    /// Round trips spent before the WebSocket upgrade (1 for TCP, 2 with TLS 1.3).
    pub setup_round_trips: u32,
    /// How long a connect to an unreachable server takes to fail.
    pub connect_timeout: Duration,
}

impl Default for SignalLink {
    /// 1 ms, no jitter, unlimited, no setup round trips, 10 s connect timeout.
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            bandwidth_bps: None,
            setup_round_trips: 0,
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl SignalLink {
    /// A link with the given one-way latency and the other defaults.
    pub fn with_latency(latency: Duration) -> Self {
        Self {
            latency,
            ..Self::default()
        }
    }
}

/// Why a node's signaling connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The server closed it with this WebSocket close code and reason.
    Server {
        /// RFC 6455 §7.4 close code.
        code: u16,
        /// The reason in the close frame.
        reason: String,
    },
    /// The connection was cut ([`Sim::signal_sever`], or the server became unreachable).
    Severed,
    /// The connect failed: the server was unreachable for the whole connect timeout.
    Unreachable,
    /// The node's side closed it ([`Sim::signal_close`] or [`Request::Close`]).
    Local,
}

/// What a node's machine may ask of its signaling connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Open a connection (ignored if one is open or opening).
    Connect,
    /// Close the connection gracefully (ignored if there is none).
    Close,
}

/// The node's side of the signaling channel, implemented by a machine next to
/// [`SansIo`]. The simulator calls the `handle_*` methods when the channel has news and drains
/// [`poll_signal_frame`](Self::poll_signal_frame) and [`poll_signal_request`](Self::poll_signal_request)
/// after every input, between the transmits and the events.
pub trait SignalNode {
    /// The connection is open: frames may be sent.
    fn handle_signal_open(&mut self, now: Instant);
    /// A text frame from the server.
    fn handle_signal_frame(&mut self, now: Instant, frame: &str);
    /// The connection ended; frames polled from now on are discarded until the next open.
    fn handle_signal_closed(&mut self, now: Instant, why: Closed);
    /// The next frame to send to the server.
    fn poll_signal_frame(&mut self) -> Option<String>;
    /// The next request about the connection itself (connect, close). The default asks nothing.
    fn poll_signal_request(&mut self) -> Option<Request> {
        None
    }
}

/// The server end of the channel: one machine for all nodes, named connections, text frames.
/// Its shape is `fog_signal::server::Server`'s, which implements it.
pub trait SignalServer {
    /// A connection opened.
    fn handle_connect(&mut self, now: Instant, conn: ConnId);
    /// A text frame arrived on `conn`.
    fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: &str);
    /// The node closed `conn` or it broke. Never called after the server closed `conn` itself.
    fn handle_disconnect(&mut self, now: Instant, conn: ConnId);
    /// `now` has come.
    fn handle_timeout(&mut self, now: Instant);
    /// The next frame to send or connection to close.
    fn poll_output(&mut self) -> Option<Output>;
    /// When [`handle_timeout`](Self::handle_timeout) is next due.
    fn poll_timeout(&self) -> Option<Instant>;
}

impl SignalServer for fog_signal::server::Server {
    fn handle_connect(&mut self, now: Instant, conn: ConnId) {
        fog_signal::server::Server::handle_connect(self, now, conn);
    }
    fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: &str) {
        fog_signal::server::Server::handle_frame(self, now, conn, frame);
    }
    fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        fog_signal::server::Server::handle_disconnect(self, now, conn);
    }
    fn handle_timeout(&mut self, now: Instant) {
        fog_signal::server::Server::handle_timeout(self, now);
    }
    fn poll_output(&mut self) -> Option<Output> {
        fog_signal::server::Server::poll_output(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        fog_signal::server::Server::poll_timeout(self)
    }
}

/// Where a node's signaling connection is, as [`Sim::signal_state`] reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No connection.
    Idle,
    /// A connect is under way on `conn`.
    Connecting(ConnId),
    /// The node's end of `conn` is open.
    Open(ConnId),
}

/// Counters of the signaling channel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignalStats {
    /// Connects started.
    pub connects: u64,
    /// Frames put on a connection, both directions.
    pub frames_sent: u64,
    /// Frames handed to the server or a node.
    pub frames_delivered: u64,
    /// Frames in flight when their connection was severed.
    pub frames_lost: u64,
    /// Frames sent with no open connection, or arriving at an end that had closed.
    pub frames_discarded: u64,
}

/// What a [`ClientNode`] reports. No `Instant` inside, so that the trace stays comparable across
/// runs: the punch instant is given as an offset from the simulator's epoch.
#[derive(Debug, Clone, PartialEq)]
// The client's events carry whole descriptions (signed, with their key exchange); boxing them
// would only move the allocation in a harness that records a few hundred events.
#[allow(clippy::large_enum_variant)]
pub enum NodeEvent {
    /// The signaling connection opened (the client starts its handshake).
    Opened,
    /// The signaling connection ended.
    Closed(Closed),
    /// Start punching at this offset from the simulator's epoch (the client's
    /// [`Event::PunchAt`], which never appears inside [`NodeEvent::Signal`]).
    PunchAt {
        /// The session.
        session: SessionId,
        /// Offset of the punch instant from [`Sim::epoch`].
        at: Duration,
    },
    /// Any other event of the client.
    Signal(Event),
}

/// A node machine that runs one `fog_signal` [`Client`] over the channel and nothing else: it
/// sends no datagrams and accepts none. Commands go through [`ClientNode::client_mut`] inside
/// [`Sim::with_machine`]; events come out of [`Sim::take_events`] with their instants.
#[derive(Debug)]
pub struct ClientNode {
    client: Client,
    epoch: Instant,
    events: VecDeque<NodeEvent>,
    requests: VecDeque<Request>,
    authenticated_at: Option<Instant>,
}

impl ClientNode {
    /// A node whose client uses `config`; `epoch` is [`Sim::epoch`] (for [`NodeEvent::PunchAt`]).
    pub fn new(config: ClientConfig, epoch: Instant) -> Self {
        Self {
            client: Client::new(config),
            epoch,
            events: VecDeque::new(),
            requests: VecDeque::new(),
            authenticated_at: None,
        }
    }

    /// The client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The client, to issue commands.
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.client
    }

    /// When the client last became authenticated.
    pub fn authenticated_at(&self) -> Option<Instant> {
        self.authenticated_at
    }

    /// Asks the simulator to open (or close) the connection at the next drain.
    pub fn request(&mut self, request: Request) {
        self.requests.push_back(request);
    }

    /// Moves the client's events into ours, in order, translating what must be.
    fn pump(&mut self, now: Instant) {
        while let Some(event) = self.client.poll_event() {
            let event = match event {
                Event::PunchAt { session, at } => NodeEvent::PunchAt {
                    session,
                    at: at.saturating_duration_since(self.epoch),
                },
                Event::Authenticated { .. } => {
                    self.authenticated_at = Some(now);
                    NodeEvent::Signal(event)
                }
                Event::Failed { .. } => {
                    // The client's docs: after a failed handshake the driver closes.
                    self.requests.push_back(Request::Close);
                    NodeEvent::Signal(event)
                }
                other => NodeEvent::Signal(other),
            };
            self.events.push_back(event);
        }
    }
}

impl SansIo for ClientNode {
    type Event = NodeEvent;

    fn accepts(&self, _packet: &Receive<'_>) -> bool {
        false
    }

    fn handle_packet(&mut self, _now: Instant, _packet: Receive<'_>) {}

    fn handle_timeout(&mut self, now: Instant) {
        self.client.handle_timeout(now);
        self.pump(now);
    }

    fn poll_transmit(&mut self, _now: Instant, _buf: &mut [u8]) -> Option<Transmit> {
        None
    }

    fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.client.poll_timeout()
    }
}

impl SignalNode for ClientNode {
    fn handle_signal_open(&mut self, now: Instant) {
        self.events.push_back(NodeEvent::Opened);
        self.client.handle_connected(now);
        self.pump(now);
    }

    fn handle_signal_frame(&mut self, now: Instant, frame: &str) {
        self.client.handle_frame(now, frame);
        self.pump(now);
    }

    fn handle_signal_closed(&mut self, _now: Instant, why: Closed) {
        self.events.push_back(NodeEvent::Closed(why));
    }

    fn poll_signal_frame(&mut self) -> Option<String> {
        self.client.poll_frame()
    }

    fn poll_signal_request(&mut self) -> Option<Request> {
        self.requests.pop_front()
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            State::Idle => f.write_str("idle"),
            State::Connecting(c) => write!(f, "connecting c{}", c.0),
            State::Open(c) => write!(f, "open c{}", c.0),
        }
    }
}
