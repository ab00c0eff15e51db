//! SCTP (RFC 9260) for FogConnect, sans-IO: one association with one peer, on `sctp-proto`.
//!
//! An [`Association`] takes whole SCTP packets ([`Association::handle_packet`]) and gives whole
//! SCTP packets back ([`Association::poll_transmit`]); what carries them is the caller's
//! business. Inside FogConnect each packet rides behind framing byte 6 in the session's sealed
//! datagrams; for the interop test it goes straight into UDP (RFC 6951 encapsulation, no
//! framing at all). The crate never sees the difference.
//!
//! Streams are opened by number with a [`StreamConfig`]: ordered or unordered delivery, and
//! full reliability or partial reliability (PR-SCTP, RFC 3758: a message is given up after a
//! number of retransmissions, RFC 7496 §3.1, or after a lifetime, RFC 3758 §5's timed
//! reliability). Each [`Association::send`] is one message; the receiver reads whole messages
//! ([`Association::read`]).
//!
//! Driving it:
//!
//! ```no_run
//! use std::net::UdpSocket;
//! use std::time::Instant;
//! use fog_sctp::{Association, Config, Event, StreamConfig};
//!
//! # #[allow(clippy::disallowed_methods)]
//! # fn main() -> std::io::Result<()> {
//! let socket = UdpSocket::bind("127.0.0.1:0")?;
//! let peer = "127.0.0.1:9899".parse().unwrap();
//! let mut assoc = Association::connect(Instant::now(), Config::default(), peer);
//! assoc.open_stream(0, StreamConfig::default()).expect("a stream number in range");
//! assoc.send(Instant::now(), 0, b"hello").expect("room in the send buffer");
//! let mut buf = [0u8; 2048];
//! loop {
//!     let now = Instant::now();
//!     // 1. transmits, 2. events, 3. the next deadline (after every input or command).
//!     while let Some(t) = assoc.poll_transmit(now, &mut buf) {
//!         socket.send_to(&buf[..t.len], t.destination)?;
//!     }
//!     while let Some(event) = assoc.poll_event() {
//!         match event {
//!             Event::Readable(stream) => {
//!                 while let Some(message) = assoc.read(stream) { let _ = message; }
//!             }
//!             Event::Closed(_) => return Ok(()),
//!             _ => {}
//!         }
//!     }
//!     let wait = assoc.poll_timeout().map(|t| t.saturating_duration_since(now));
//!     socket.set_read_timeout(wait.filter(|d| !d.is_zero()))?;
//!     match socket.recv_from(&mut buf) {
//!         Ok((n, from)) => { let _ = assoc.handle_packet(Instant::now(), from, &buf[..n]); }
//!         Err(_) => assoc.handle_timeout(Instant::now()),
//!     }
//! }
//! # }
//! ```
//!
//! Why `sctp-proto`: it is the sans-IO SCTP that str0m (and so the WebRTC data channels of
//! several projects) runs on, with the endpoint/association shape of quinn-proto; writing SCTP
//! again would only add bugs. This crate adds what FogConnect's contract needs around it:
//!
//! - **A graceful close that loses nothing.** sctp-proto sends SHUTDOWN once nothing is *in
//!   flight*, dropping messages still queued behind the congestion window; so
//!   [`Association::close`] first waits until every byte sent is acknowledged, then shuts down
//!   (RFC 9260 §9.2), and reports [`CloseReason::Local`] once the SHUTDOWN COMPLETE leaves
//!   (sctp-proto itself reports nothing on that side).
//! - **Giving up.** sctp-proto retransmits DATA and SHUTDOWN for ever; here an association
//!   that has something unacknowledged and hears nothing from the peer for
//!   [`Config::dead_after`] ends [`CloseReason::Dead`], and a shutdown the peer does not
//!   answer within [`Config::close_timeout`] ends [`CloseReason::LocalUnanswered`].
//! - **Bounds.** One association per [`Association`] (further INITs are refused), at most
//!   [`Config::max_streams`] streams each way, [`Config::send_buffer`] bytes queued, messages
//!   of at most [`Config::max_message`] bytes, [`Config::receive_buffer`] bytes of receive
//!   window.
//! - **No panics on input.** Packets go through sctp-proto's checksum and parser; packets that
//!   are not for this association are dropped and counted ([`Stats::dropped`]). The fuzz
//!   target `sctp_association` feeds arbitrary packets to an established association.
//!
//! What sctp-proto does that a FogConnect protocol crate would not: it reads the OS random
//! source (the association's verification tag and initial TSN, the cookie secret; RFC 9260
//! §5.1.3 wants them unpredictable, so a seed shared by tests would be the wrong source
//! anyway), and [`Association::connect`] starts the INIT's retransmission timer from the wall
//! clock rather than from `now` (sctp-proto's `Endpoint::connect` takes no time). In virtual
//! time that makes the first INIT's retransmission come early or late, once; everything after
//! follows `now`. Neither reaches this crate's own code, which takes `now` everywhere.

#![forbid(unsafe_code)]

mod wire;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use fog_core::Transmit;
use sctp_proto::{
    AssociationHandle, ClientConfig, DatagramEvent, Endpoint, EndpointConfig, Event as SctpEvent,
    Payload, PayloadProtocolIdentifier, ReliabilityType, ServerConfig, StreamEvent,
    TransportConfig,
};

/// An SCTP stream number (RFC 9260 §3.3.1, "Stream Identifier S").
pub type StreamId = u16;

/// The SCTP port both ends use when nothing else is said (RFC 8831 §5 uses 5000 for data
/// channels too; inside FogConnect the session says who is who, so the port is a formality).
pub const DEFAULT_PORT: u16 = 5000;

/// The payload protocol identifier our messages carry: 0, "unspecified" (RFC 9260 §3.3.1),
/// since FogConnect messages are opaque bytes.
const PPI: PayloadProtocolIdentifier = PayloadProtocolIdentifier::Unknown;

/// SCTP common header length (RFC 9260 §3.1): ports, verification tag, checksum.
const COMMON_HEADER: usize = 12;

/// Chunk type of SHUTDOWN COMPLETE (RFC 9260 §3.3.13).
const SHUTDOWN_COMPLETE: u8 = 14;

/// How an association behaves; the defaults suit a punched path between two FogConnect nodes.
#[derive(Debug, Clone)]
pub struct Config {
    /// Our SCTP port, and the peer's (RFC 9260 §3.1). usrsctp's echo server listens on 7.
    pub local_port: u16,
    /// The peer's SCTP port.
    pub remote_port: u16,
    /// Largest SCTP packet we send, common header included. What carries the packets decides:
    /// inside FogConnect, what fits a sealed datagram after the framing byte.
    pub max_packet: usize,
    /// Largest message [`Association::send`] takes, and the largest the peer may send us.
    pub max_message: usize,
    /// Bytes [`Association::send`] may have queued and unacknowledged, over all streams;
    /// a send that would pass it is refused whole ([`SendError::Blocked`]).
    pub send_buffer: usize,
    /// The receive window we advertise (RFC 9260 §6.2), and the most the peer can make us hold.
    pub receive_buffer: u32,
    /// Streams each way (RFC 9260 §5.1.1: OS and MIS of the INIT); stream numbers run from 0.
    pub max_streams: u16,
    /// RTO.Initial, RTO.Min and RTO.Max (RFC 9260 §6.3.1, §16). RFC 9260 suggests 1 s, 1 s and
    /// 60 s for the open internet; FogConnect's paths are punched and their round trip
    /// measured, so the defaults follow WebRTC's stacks instead (dcsctp: 500 ms initial) and
    /// keep the longest back-off short enough to notice a new path within seconds.
    pub rto_initial: Duration,
    /// RTO.Min.
    pub rto_min: Duration,
    /// RTO.Max.
    pub rto_max: Duration,
    /// INIT retransmissions before the handshake is given up (RFC 9260 §16,
    /// Max.Init.Retransmits).
    pub max_init_retransmits: usize,
    /// With anything unacknowledged, this long without a packet from the peer ends the
    /// association ([`CloseReason::Dead`]). sctp-proto itself never gives up on DATA.
    pub dead_after: Duration,
    /// How long [`Association::close`] may take, from the call to the SHUTDOWN COMPLETE,
    /// before it ends [`CloseReason::LocalUnanswered`].
    pub close_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            local_port: DEFAULT_PORT,
            remote_port: DEFAULT_PORT,
            max_packet: 1200,
            max_message: 64 * 1024,
            send_buffer: 1024 * 1024,
            receive_buffer: 1024 * 1024,
            max_streams: 64,
            rto_initial: Duration::from_millis(500),
            rto_min: Duration::from_millis(200),
            rto_max: Duration::from_secs(4),
            max_init_retransmits: 10,
            dead_after: Duration::from_secs(30),
            close_timeout: Duration::from_secs(30),
        }
    }
}

impl Config {
    fn transport(&self) -> Arc<TransportConfig> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
        let message = u32::try_from(self.max_message).unwrap_or(u32::MAX);
        Arc::new(
            TransportConfig::default()
                .with_local_port(self.local_port)
                .with_remote_port(self.remote_port)
                .with_max_send_message_size(message)
                .with_max_receive_message_size(message)
                .with_max_receive_buffer_size(self.receive_buffer)
                .with_max_num_outbound_streams(self.max_streams)
                .with_max_num_inbound_streams(self.max_streams)
                .with_rto_initial_ms(ms(self.rto_initial))
                .with_rto_min_ms(ms(self.rto_min))
                .with_rto_max_ms(ms(self.rto_max))
                .with_max_init_retransmits(Some(self.max_init_retransmits))
                // Never give up one DATA chunk of a reliable stream: `dead_after` decides
                // when the whole association is lost.
                .with_max_data_retransmits(None),
        )
    }

    fn endpoint(&self) -> Arc<EndpointConfig> {
        let mut config = EndpointConfig::new();
        // sctp-proto counts the packet as payload + common header + DATA chunk header, but
        // then pads the chunk to 4 bytes (RFC 9260 §3.2): a payload that is a multiple of 4
        // keeps the whole packet within `max_packet`.
        let payload = (self.max_packet.saturating_sub(COMMON_HEADER + 16) & !3).max(64);
        config.max_payload_size(u32::try_from(payload).unwrap_or(u32::MAX));
        Arc::new(config)
    }
}

/// How a stream delivers (RFC 9260 §6.6 for order, RFC 3758 for partial reliability).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamConfig {
    /// Messages are delivered in the order sent (`true`) or as they arrive (`false`, the U bit
    /// of RFC 9260 §3.3.1).
    pub ordered: bool,
    /// When a message may be given up.
    pub reliability: Reliability,
}

impl Default for StreamConfig {
    /// Reliable and ordered, like a byte stream of messages.
    fn default() -> Self {
        StreamConfig {
            ordered: true,
            reliability: Reliability::Reliable,
        }
    }
}

/// When the sender may give a message up (PR-SCTP, RFC 3758: abandoned messages are skipped
/// with FORWARD TSN, §3.5, so the receiver stops waiting for them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reliability {
    /// Retransmitted until acknowledged.
    Reliable,
    /// Given up after this many retransmissions (RFC 7496 §3.1, "limited retransmissions").
    MaxRetransmits(u32),
    /// Given up once this old, counted from the first transmission (RFC 3758 §5, "timed
    /// reliability").
    Lifetime(Duration),
}

/// What an association reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The handshake (RFC 9260 §5.1) completed: sends go out now.
    Connected,
    /// The peer sent on a stream we had not opened; it is open now, reliable and ordered for
    /// what we send on it until [`Association::open_stream`] says otherwise.
    StreamOpened(StreamId),
    /// A stream has messages to [`read`](Association::read).
    Readable(StreamId),
    /// A send refused with [`SendError::Blocked`] would now fit (half the buffer is free).
    Writable,
    /// The association ended; the last event.
    Closed(CloseReason),
}

/// Why an association ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Our [`close`](Association::close) completed: everything sent was acknowledged and the
    /// shutdown handshake finished (or nothing was ever opened).
    Local,
    /// Our close gave up: the peer did not answer the shutdown within
    /// [`Config::close_timeout`] (what we sent had been acknowledged, or the close could not
    /// wait for it).
    LocalUnanswered,
    /// The peer shut down gracefully (RFC 9260 §9.2) after everything it sent reached us.
    Peer,
    /// The peer aborted the association (RFC 9260 §9.1), or broke the protocol.
    Aborted,
    /// Nothing heard from the peer for [`Config::dead_after`] with data unacknowledged.
    Dead,
    /// The handshake was given up (no INIT ACK or COOKIE ACK after the retransmissions).
    HandshakeFailed,
}

/// Why [`Association::send`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// Over [`Config::max_message`].
    TooLong,
    /// The send buffer has no room for it now; [`Event::Writable`] says when.
    Blocked,
    /// No such stream is open (see [`Association::open_stream`]).
    UnknownStream,
    /// The association is closing or closed.
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::TooLong => "message longer than the association's limit",
            SendError::Blocked => "send buffer full",
            SendError::UnknownStream => "stream not open",
            SendError::Closed => "association closing or closed",
        })
    }
}

impl std::error::Error for SendError {}

/// Why [`Association::open_stream`] refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamError {
    /// The number is not below [`Config::max_streams`].
    OutOfRange,
    /// The association is closing or closed.
    Closed,
}

impl fmt::Display for StreamError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            StreamError::OutOfRange => "stream number beyond the association's streams",
            StreamError::Closed => "association closing or closed",
        })
    }
}

impl std::error::Error for StreamError {}

/// A packet [`Association::handle_packet`] did not take (and counted in [`Stats::dropped`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dropped;

/// Counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Packets taken by the association.
    pub packets_in: u64,
    /// Packets sent.
    pub packets_out: u64,
    /// Packets dropped: malformed, a bad checksum, not for this association, a second INIT.
    pub dropped: u64,
    /// Messages accepted by [`Association::send`].
    pub messages_sent: u64,
    /// Messages [`Association::read`] returned.
    pub messages_received: u64,
}

/// Where the association is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Handshaking (or, for the accepting side, waiting for an INIT).
    Opening,
    /// Established.
    Open,
    /// `close` was called: waiting for the handshake if it is still going, for everything
    /// sent to be acknowledged, then for the shutdown to complete, until `deadline`.
    Closing { deadline: Instant, shutdown: bool },
    /// Ended; `Event::Closed` is queued or gone.
    Closed,
}

/// One SCTP association with one peer. See the [crate docs](crate).
pub struct Association {
    config: Config,
    endpoint: Endpoint,
    /// The association, once there is one (the caller's at once, the acceptor's at the INIT).
    inner: Option<(AssociationHandle, Box<sctp_proto::Association>)>,
    peer: SocketAddr,
    phase: Phase,
    /// The handshake completed (also when a close came before it did).
    handshaken: bool,
    /// Streams we opened, with how they deliver; applied once the association is established.
    streams: BTreeMap<StreamId, StreamConfig>,
    /// Messages sent before the handshake completed, in order.
    early: VecDeque<(StreamId, Vec<u8>)>,
    early_bytes: usize,
    /// SCTP packets waiting for `poll_transmit`.
    out: VecDeque<Bytes>,
    events: VecDeque<Event>,
    /// When the peer was last heard (a packet its association took).
    last_heard: Instant,
    /// The latest `now` any call brought.
    latest: Instant,
    /// Since when we wait for the peer (a handshake, data unacknowledged, a shutdown), if we
    /// do: the silence that counts towards `dead_after` starts at the later of this and
    /// `last_heard`, so an association idle for long is not dead the moment it sends.
    waiting_since: Option<Instant>,
    /// A send was refused `Blocked`: say `Writable` when there is room.
    blocked: bool,
    /// Bytes sent and not yet acknowledged (sctp-proto's buffered amounts plus `early`), as of
    /// the last input or command.
    unacked: usize,
    /// The peer started its shutdown while we were open (RFC 9260 §9.2): the association's
    /// end is then the peer's graceful close, not an abort, and nothing more may be sent.
    peer_closing: bool,
    /// The peer's SHUTDOWN, held back (a packet of it alone) until what we sent is
    /// acknowledged: see [`wire::split_shutdown`].
    held_shutdown: Option<Bytes>,
    /// The verification tag of the packets the association takes (RFC 9260 §8.5): a SHUTDOWN
    /// is held back only when it carries it.
    tag: Option<[u8; 4]>,
    /// The peer's verification tag: the one on the packets we send once established.
    peer_tag: Option<[u8; 4]>,
    stats: Stats,
}

impl fmt::Debug for Association {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Association")
            .field("peer", &self.peer)
            .field("phase", &self.phase)
            .field("streams", &self.streams)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Association {
    /// Opens an association to `peer` (sends the INIT).
    pub fn connect(now: Instant, config: Config, peer: SocketAddr) -> Self {
        let mut this = Self::new(now, config, peer);
        // A caller takes no association from the peer: any INIT it hears is refused.
        this.endpoint.reject_new_associations();
        let mut client = ClientConfig::new();
        client.transport = this.config.transport();
        match this.endpoint.connect(client, peer) {
            Ok((handle, assoc)) => {
                this.inner = Some((handle, Box::new(assoc)));
                this.note_waiting();
            }
            // Only a zero port or remote port gets here (a config error): nothing can open.
            Err(_) => this.end(CloseReason::HandshakeFailed),
        }
        this
    }

    /// Waits for the peer's INIT and accepts it (one association; later INITs are refused).
    /// `peer` is where packets go until the INIT names the peer's address.
    pub fn accept(now: Instant, config: Config, peer: SocketAddr) -> Self {
        Self::new(now, config, peer)
    }

    fn new(now: Instant, config: Config, peer: SocketAddr) -> Self {
        let mut server = ServerConfig::new();
        server.transport = config.transport();
        // A server config even for the caller: sctp-proto's endpoint unwraps it for every
        // INIT it does not know (and then refuses, see `connect`).
        let endpoint = Endpoint::new(config.endpoint(), Some(Arc::new(server)));
        Association {
            config,
            endpoint,
            inner: None,
            peer,
            phase: Phase::Opening,
            handshaken: false,
            streams: BTreeMap::new(),
            early: VecDeque::new(),
            early_bytes: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
            last_heard: now,
            latest: now,
            waiting_since: None,
            blocked: false,
            unacked: 0,
            peer_closing: false,
            held_shutdown: None,
            tag: None,
            peer_tag: None,
            stats: Stats::default(),
        }
    }

    /// The counters.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether the handshake completed and the association has not ended.
    pub fn is_established(&self) -> bool {
        self.handshaken && self.phase != Phase::Closed
    }

    /// Whether it ended.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Opens (or reconfigures) stream `id` for what we send. The peer needs no notice: its
    /// side of the stream opens with the first message. May be called before the handshake.
    pub fn open_stream(&mut self, id: StreamId, config: StreamConfig) -> Result<(), StreamError> {
        if id >= self.config.max_streams {
            return Err(StreamError::OutOfRange);
        }
        if matches!(self.phase, Phase::Closing { .. } | Phase::Closed) {
            return Err(StreamError::Closed);
        }
        self.streams.insert(id, config);
        if self.handshaken {
            self.apply_stream(id, config);
        }
        Ok(())
    }

    /// Creates stream `id` in sctp-proto with `config`, or reconfigures it.
    fn apply_stream(&mut self, id: StreamId, config: StreamConfig) {
        let Some((_, assoc)) = &mut self.inner else {
            return;
        };
        let (kind, value) = match config.reliability {
            Reliability::Reliable => (ReliabilityType::Reliable, 0),
            Reliability::MaxRetransmits(n) => (ReliabilityType::Rexmit, n),
            Reliability::Lifetime(d) => (
                ReliabilityType::Timed,
                u32::try_from(d.as_millis()).unwrap_or(u32::MAX),
            ),
        };
        let stream = match assoc.stream(id) {
            Ok(stream) => Ok(stream),
            Err(_) => assoc.open_stream(id, PPI),
        };
        if let Ok(mut stream) = stream {
            let _ = stream.set_reliability_params(!config.ordered, kind, value);
        }
    }

    /// Bytes queued and not yet acknowledged, over all streams (and before the handshake).
    pub fn buffered(&self) -> usize {
        self.unacked
    }

    /// Recounts `unacked` from sctp-proto's streams.
    fn count_unacked(&mut self) {
        let mut total = self.early_bytes;
        if let Some((_, assoc)) = &mut self.inner {
            for id in assoc.stream_ids() {
                if let Ok(stream) = assoc.stream(id) {
                    total += stream.buffered_amount().unwrap_or(0);
                }
            }
        }
        self.unacked = total;
    }

    /// Whether a send refused `Blocked` may try again: half the send buffer is free.
    pub fn has_room(&self) -> bool {
        self.accepts_sends() && self.buffered() < self.config.send_buffer / 2
    }

    /// Neither side has begun to close: a send may be queued (RFC 9260 §9.2: once the peer's
    /// SHUTDOWN came, nothing new is taken from the user).
    fn accepts_sends(&self) -> bool {
        !matches!(self.phase, Phase::Closing { .. } | Phase::Closed) && !self.peer_closing
    }

    /// Queues one message on stream `stream`, whole or not at all. Before the handshake
    /// completes it waits here, in order.
    /// `now` starts the wait for the acknowledgement (see [`Config::dead_after`]).
    pub fn send(&mut self, now: Instant, stream: StreamId, data: &[u8]) -> Result<(), SendError> {
        self.latest = self.latest.max(now);
        if !self.accepts_sends() {
            return Err(SendError::Closed);
        }
        if data.len() > self.config.max_message || data.len() > self.config.send_buffer {
            return Err(SendError::TooLong);
        }
        let known = self.streams.contains_key(&stream)
            || self
                .inner
                .as_mut()
                .is_some_and(|(_, a)| a.stream(stream).is_ok());
        if !known {
            return Err(SendError::UnknownStream);
        }
        if self.buffered() + data.len() > self.config.send_buffer {
            self.blocked = true;
            return Err(SendError::Blocked);
        }
        if !self.handshaken {
            self.early.push_back((stream, data.to_vec()));
            self.early_bytes += data.len();
        } else {
            self.write(stream, data)?;
        }
        self.unacked += data.len();
        self.stats.messages_sent += 1;
        self.note_waiting();
        Ok(())
    }

    /// Hands one message to sctp-proto's stream (established only: a write before then would
    /// use up a stream sequence number and fail, and the peer would wait for it for ever).
    fn write(&mut self, stream: StreamId, data: &[u8]) -> Result<(), SendError> {
        let Some((_, assoc)) = &mut self.inner else {
            return Err(SendError::Closed);
        };
        let mut s = assoc.stream(stream).map_err(|_| SendError::UnknownStream)?;
        if data.is_empty() {
            // SCTP has no empty DATA chunk (RFC 9260 §3.3.1: a DATA chunk carries at least
            // one byte); an empty message goes nowhere, as a zero-length write.
            return Ok(());
        }
        match s.write_with_ppi(data, PPI) {
            Ok(_) => Ok(()),
            Err(_) => Err(SendError::Closed),
        }
    }

    /// The next whole message on `stream`, if one is there.
    pub fn read(&mut self, stream: StreamId) -> Option<Vec<u8>> {
        let (_, assoc) = self.inner.as_mut()?;
        let chunks = assoc.stream(stream).ok()?.read().ok()??;
        let mut data = vec![0u8; chunks.len()];
        let n = chunks.read(&mut data).ok()?;
        data.truncate(n);
        self.stats.messages_received += 1;
        Some(data)
    }

    /// The owner moved the association's packets to another path (their address unchanged):
    /// a wait for the peer that began on the old path starts again now, so the new path has
    /// the whole [`Config::dead_after`] to answer. (The retransmission timer needs no kick:
    /// [`Config::rto_max`] keeps it within a few seconds.)
    pub fn path_changed(&mut self, now: Instant) {
        self.latest = self.latest.max(now);
        if self.waiting_since.is_some() {
            self.waiting_since = Some(self.latest);
        }
    }

    /// Starts the graceful close: what was sent is delivered and acknowledged, then the
    /// shutdown handshake (RFC 9260 §9.2) ends the association ([`CloseReason::Local`]).
    /// Nothing more may be sent.
    pub fn close(&mut self, now: Instant) {
        self.latest = self.latest.max(now);
        match self.phase {
            // An acceptor that heard no INIT and has nothing to send: nothing to wait for.
            Phase::Opening if self.inner.is_none() && self.early.is_empty() => {
                self.end(CloseReason::Local);
            }
            // What was sent before the handshake completed goes first, then the shutdown.
            Phase::Opening | Phase::Open => {
                self.phase = Phase::Closing {
                    deadline: now + self.config.close_timeout,
                    shutdown: false,
                };
                self.progress();
            }
            Phase::Closing { .. } | Phase::Closed => {}
        }
    }

    /// One SCTP packet from `source` (UDP payload, or what a framing carried). Packets not
    /// for this association, malformed or with a bad checksum are dropped and counted.
    pub fn handle_packet(
        &mut self,
        now: Instant,
        source: SocketAddr,
        packet: &[u8],
    ) -> Result<(), Dropped> {
        self.latest = self.latest.max(now);
        if self.phase == Phase::Closed {
            self.stats.dropped += 1;
            return Err(Dropped);
        }
        let mut packet = Some(match wire::strip_addresses(packet) {
            Some(stripped) => Bytes::from(stripped),
            None => Bytes::copy_from_slice(packet),
        });
        let mut held = false;
        let ours = self
            .tag
            .is_some_and(|t| packet.as_ref().and_then(|p| p.get(4..8)) == Some(&t[..]));
        if self.unacked > 0 && ours {
            if let Some((rest, shutdown)) = packet.as_ref().and_then(|p| wire::split_shutdown(p)) {
                if self.phase == Phase::Open {
                    self.peer_closing = true;
                }
                self.held_shutdown = Some(Bytes::from(shutdown));
                held = true;
                packet = rest.map(Bytes::from);
            }
        }
        let repeat_ack = match (&packet, self.peer_tag, &self.inner) {
            (Some(p), Some(peer_tag), Some((_, assoc))) if ours && assoc.is_closing() => {
                wire::cookie_ack_for(p, peer_tag)
            }
            _ => None,
        };
        let taken = match packet {
            Some(packet) => self.feed(now, source, packet),
            None => false,
        };
        if let Some(ack) = repeat_ack.filter(|_| taken) {
            self.out.push_back(Bytes::from(ack));
        }
        if !taken && !held {
            self.stats.dropped += 1;
            return Err(Dropped);
        }
        self.stats.packets_in += 1;
        self.last_heard = now;
        self.progress();
        Ok(())
    }

    /// Hands one packet to sctp-proto; whether our association (or the one it makes) took it.
    fn feed(&mut self, now: Instant, source: SocketAddr, packet: Bytes) -> bool {
        let tag = packet
            .get(4..8)
            .and_then(|t| <[u8; 4]>::try_from(t).ok())
            .filter(|t| *t != [0; 4]);
        let routed = self.endpoint.handle(now, source, None, None, packet);
        let taken = match (routed, &mut self.inner) {
            (Some((handle, DatagramEvent::AssociationEvent(event))), Some((ours, assoc)))
                if handle == *ours =>
            {
                assoc.handle_event(event);
                true
            }
            (Some((handle, DatagramEvent::NewAssociation(assoc))), None) => {
                // Ours, the one the endpoint will ever make.
                self.endpoint.reject_new_associations();
                self.peer = source;
                self.inner = Some((handle, Box::new(assoc)));
                true
            }
            _ => false,
        };
        if taken && tag.is_some() {
            self.tag = tag;
        }
        taken
    }

    /// Fires what is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.latest = self.latest.max(now);
        if self.phase == Phase::Closed {
            return;
        }
        if let Some((_, assoc)) = &mut self.inner {
            assoc.handle_timeout(now);
        }
        self.progress();
        if self.phase == Phase::Closed {
            return;
        }
        if let Phase::Closing { deadline, .. } = self.phase {
            if now >= deadline {
                self.end(CloseReason::LocalUnanswered);
                return;
            }
        }
        if let Some(dead) = self.dead_deadline() {
            if now >= dead {
                self.end(CloseReason::Dead);
            }
        }
    }

    /// When `handle_timeout` is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            return None;
        }
        let sctp = self.inner.as_ref().and_then(|(_, a)| a.poll_timeout());
        let closing = match self.phase {
            Phase::Closing { deadline, .. } => Some(deadline),
            _ => None,
        };
        // The caller's first INIT timer runs on the wall clock (see the crate docs): where
        // `now` is virtual it can lie before the latest `now`, and is due at once, not then.
        [sctp, closing, self.dead_deadline()]
            .into_iter()
            .flatten()
            .min()
            .map(|t| t.max(self.latest))
    }

    /// When the peer's silence ends the association: only while we wait for it (a
    /// handshake, data unacknowledged, a shutdown). An idle association never dies here;
    /// whoever drives it decides how long idle may last.
    fn dead_deadline(&self) -> Option<Instant> {
        let since = self.waiting_since?;
        Some(self.last_heard.max(since) + self.config.dead_after)
    }

    /// Notes whether we wait for the peer now (after anything that may change it). Before an
    /// INIT came, the acceptor has nobody to wait for.
    fn note_waiting(&mut self) {
        let waiting = self.inner.is_some()
            && match self.phase {
                Phase::Opening | Phase::Closing { .. } => true,
                Phase::Open => self.unacked > 0,
                Phase::Closed => false,
            };
        self.waiting_since = match (waiting, self.waiting_since) {
            (true, None) => Some(self.latest),
            (true, since) => since,
            (false, _) => None,
        };
    }

    /// The next SCTP packet into `buf`, at most [`Config::max_packet`] bytes; `None` when
    /// there is nothing to send. A packet that does not fit `buf` is dropped (and counted):
    /// give at least [`Config::max_packet`].
    pub fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.latest = self.latest.max(now);
        loop {
            if self.out.is_empty() {
                let (_, assoc) = self.inner.as_mut()?;
                if self.phase == Phase::Closed {
                    return None;
                }
                let t = assoc.poll_transmit(now)?;
                if let Payload::RawEncode(packets) = t.payload {
                    self.peer = t.remote;
                    for packet in packets {
                        let parts = wire::split(packet.to_vec(), self.config.max_packet);
                        self.out.extend(parts.into_iter().map(Bytes::from));
                    }
                }
                continue;
            }
            let packet = self.out.pop_front()?;
            let Some(slot) = buf
                .get_mut(..packet.len())
                .filter(|_| packet.len() <= self.config.max_packet)
            else {
                self.stats.dropped += 1;
                continue;
            };
            slot.copy_from_slice(&packet);
            if self.handshaken {
                self.peer_tag = packet
                    .get(4..8)
                    .and_then(|t| <[u8; 4]>::try_from(t).ok())
                    .or(self.peer_tag);
            }
            self.stats.packets_out += 1;
            if packet.get(COMMON_HEADER) == Some(&SHUTDOWN_COMPLETE)
                && matches!(self.phase, Phase::Closing { .. })
            {
                // RFC 9260 §9.2: the SHUTDOWN ACK made us send SHUTDOWN COMPLETE and remove
                // the association; sctp-proto says nothing on this side, so this is the
                // moment our close is done.
                self.end(CloseReason::Local);
            }
            return Some(Transmit::new(self.peer, packet.len()));
        }
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// After any input or command: sctp-proto's events become ours, early messages go out once
    /// established, a close moves on when everything is acknowledged.
    fn progress(&mut self) {
        let mut ended = None;
        while let Some((_, assoc)) = &mut self.inner {
            // Endpoint events only ever say "drained", which sctp-proto sends at the *start*
            // of a shutdown: handing it on would make the endpoint forget the association and
            // drop the peer's SHUTDOWN ACK. The endpoint serves this one association and ends
            // with it, so there is nothing to clean up.
            while assoc.poll_endpoint_event().is_some() {}
            if assoc.is_closing() && self.phase == Phase::Open {
                self.peer_closing = true;
            }
            let Some(event) = assoc.poll() else {
                break;
            };
            match event {
                SctpEvent::Connected if !self.handshaken => {
                    self.handshaken = true;
                    if self.phase == Phase::Opening {
                        self.phase = Phase::Open;
                    }
                    self.events.push_back(Event::Connected);
                    let streams: Vec<_> = self.streams.iter().map(|(id, c)| (*id, *c)).collect();
                    for (id, config) in streams {
                        self.apply_stream(id, config);
                    }
                    let early = std::mem::take(&mut self.early);
                    self.early_bytes = 0;
                    for (stream, data) in early {
                        let _ = self.write(stream, &data);
                    }
                }
                SctpEvent::Stream(StreamEvent::Opened { id }) => {
                    if let Some((_, assoc)) = &mut self.inner {
                        // Take it off sctp-proto's accept queue (which would otherwise grow
                        // with every stream the peer opens and closes).
                        while assoc.accept_stream().is_some() {}
                    }
                    if !self.streams.contains_key(&id) {
                        self.events.push_back(Event::StreamOpened(id));
                    }
                }
                SctpEvent::Stream(StreamEvent::Readable { id }) => {
                    self.events.push_back(Event::Readable(id));
                }
                SctpEvent::AssociationLost { .. } => {
                    ended = Some(match self.phase {
                        // Shutdowns that crossed end here (RFC 9260 §9.2: the SHUTDOWN
                        // COMPLETE of the peer); ours was under way, so it is done too.
                        Phase::Closing { .. } => CloseReason::Local,
                        _ if self.peer_closing => CloseReason::Peer,
                        _ => CloseReason::Aborted,
                    });
                    break;
                }
                SctpEvent::HandshakeFailed { .. } => {
                    ended = Some(CloseReason::HandshakeFailed);
                    break;
                }
                _ => {}
            }
        }
        if let Some(reason) = ended {
            self.end(reason);
            return;
        }
        self.count_unacked();
        if self.unacked == 0 {
            if let Some(shutdown) = self.held_shutdown.take() {
                // Everything we sent is acknowledged: the peer's SHUTDOWN may go on now.
                let (now, peer) = (self.latest, self.peer);
                self.feed(now, peer, shutdown);
                self.progress();
                return;
            }
        }
        if let Phase::Closing { deadline, shutdown } = self.phase {
            if !shutdown && self.handshaken && self.unacked == 0 {
                if let Some((_, assoc)) = &mut self.inner {
                    // Everything sent is acknowledged (RFC 9260 §9.2 wants no outstanding
                    // DATA before SHUTDOWN); a refusal means sctp-proto is no longer
                    // established, i.e. the peer's own shutdown came first: it completes
                    // without us.
                    let _ = assoc.shutdown();
                }
                self.phase = Phase::Closing {
                    deadline,
                    shutdown: true,
                };
            }
        }
        if self.blocked && self.has_room() {
            self.blocked = false;
            self.events.push_back(Event::Writable);
        }
        self.note_waiting();
    }

    /// The association ended for `reason`: queued once, whatever follows is ignored.
    fn end(&mut self, reason: CloseReason) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.out.clear();
        self.events.push_back(Event::Closed(reason));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fit_a_sealed_datagram() {
        let c = Config::default();
        assert!(c.max_packet <= 1400);
        assert!(c.rto_min <= c.rto_initial && c.rto_initial <= c.rto_max);
    }
}
