//! One connection's state inside the node.

use std::time::{Duration, Instant};

use fog_core::SansIo as _;
use fog_ice::agent::Agent;
use fog_ice::candidate::Candidate;
use fog_signal::PeerId;
use fog_signal::msg::{Description, ExchangeKey, RequestId, SessionId};

use super::event::{ConnectionId, Via};
use super::seal::{Exchange, Keys};
use super::transport::Stream;
use fog_signal::msg::Transport;

/// How long a direct path may stay silent while our stream sends on it (at least; four
/// round trips on a long path) before the node asks its STUN server whether its own mapping
/// moved. Reliable transports answer within a round trip (acknowledgements), so a second of
/// silence under traffic means the path broke: a NAT that rebound our flow or forgot it, or a
/// move to another network. Short, so that the path is back within 2 s of the change (issue
/// 15): this much, one STUN round trip, the trickle over signaling and one check.
pub(super) const SILENCE: Duration = Duration::from_millis(700);

/// Traffic from the peer that arrives at most this far apart is a stream (a transfer, its
/// acknowledgements) whose stopping [`SILENCE`] later is a silence.
const STREAMING_GAP: Duration = Duration::from_millis(100);

/// The peer's datagrams held until our side is connected (see `Connection::early`); more
/// are dropped and counted, as on a congested path.
pub(super) const EARLY_DATA_MAX: usize = 64;

/// Where a connection is in its life. Each phase holds what is valid in it.
#[derive(Debug)]
pub(super) enum Phase {
    /// Ours: waiting for discovery, signaling or the port refresh before the offer goes.
    Queued,
    /// Ours: a server or peer limit refused the last offer (too many offers pending, a full
    /// node); the next goes at `at`, as a new session.
    Retrying { at: Instant },
    /// Ours: the offer is on its way; the server has not named the session yet.
    Offered { request: RequestId },
    /// Ours: the server named the session; the answer has not come.
    AwaitingAnswer,
    /// The peer's: the application has not decided yet.
    Incoming,
    /// The peer's, accepted: waiting for discovery or the port refresh before the answer goes.
    Accepted,
    /// Both descriptions known: punching, then connected.
    Running(Box<Agent>),
    /// A browser's, answered: its fog-rtc peer (the connection's stream) does ICE itself.
    Browser,
}

/// Bytes per second over whole seconds: the count of the current second, and the rate of the
/// last whole one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Meter {
    start: Instant,
    bytes: u64,
    last: u64,
    pub(super) total_bytes: u64,
    pub(super) datagrams: u64,
}

const SECOND: Duration = Duration::from_secs(1);

impl Meter {
    pub(super) fn new(now: Instant) -> Meter {
        Meter {
            start: now,
            bytes: 0,
            last: 0,
            total_bytes: 0,
            datagrams: 0,
        }
    }

    fn roll(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < SECOND {
            return;
        }
        // The second that just ended is the last whole one only if no whole second passed
        // without traffic after it.
        self.last = if elapsed < 2 * SECOND { self.bytes } else { 0 };
        let whole = elapsed.as_secs();
        self.start += Duration::from_secs(whole);
        self.bytes = 0;
    }

    pub(super) fn add(&mut self, now: Instant, bytes: usize) {
        self.roll(now);
        self.bytes += bytes as u64;
        self.total_bytes += bytes as u64;
        self.datagrams += 1;
    }

    pub(super) fn rate(&self, now: Instant) -> u64 {
        let mut m = *self;
        m.roll(now);
        m.last
    }
}

/// The relay over signaling of one connection: a probe and its echo verify it, a probe every
/// [`SIGNAL_RELAY_KEEPALIVE`](super::SIGNAL_RELAY_KEEPALIVE) keeps the session alive on the
/// server.
#[derive(Debug, Clone, Copy)]
pub(super) struct SignalRelay {
    /// When the outstanding probe left.
    pub(super) probe_sent: Option<Instant>,
    /// When the next probe is due.
    pub(super) next_probe: Instant,
    /// The last probe's round trip.
    pub(super) rtt: Option<Duration>,
}

/// One connection.
#[derive(Debug)]
pub(super) struct Conn {
    pub(super) id: ConnectionId,
    pub(super) peer: PeerId,
    pub(super) service: u16,
    /// We answered (the peer called).
    pub(super) passive: bool,
    pub(super) phase: Phase,
    /// The signaling session, once the server named it and while it knows it.
    pub(super) session: Option<SessionId>,
    /// The peer's description, once it arrived.
    pub(super) remote: Option<Description>,
    /// Our check username fragment (public: it routes checks; the passwords come from the
    /// key exchange).
    pub(super) ufrag: String,
    /// Our ephemeral key exchange for this connection.
    pub(super) exchange: Exchange,
    /// The peer's exchange key, once its description verified.
    pub(super) remote_key: Option<ExchangeKey>,
    /// The session's keys, once both exchange keys are known.
    pub(super) keys: Option<Keys>,
    /// When the last echo on the relay over signaling left (echoes are rate-limited).
    pub(super) last_echo: Option<Instant>,
    pub(super) punch_at: Option<Instant>,
    /// The answerer's quiet punching ends here (the punch sync's instant).
    pub(super) quiet_until: Option<Instant>,
    /// A behaviour changed while the agent was punching: build it again with the new plan
    /// once the round is over, if there is still no path.
    pub(super) replan: bool,
    /// The relay over signaling, when either side's network blocks UDP.
    pub(super) signal_relay: Option<SignalRelay>,
    /// Candidates that changed while our offer was on its way (no session ID to trickle on
    /// yet): trickled once the server names the session.
    pub(super) untrickled: Vec<Candidate>,
    /// When we last sent the peer all our candidates again because it asked (its signaling
    /// connection came back): at most once a second, however often it asks.
    pub(super) resent_at: Option<Instant>,
    /// When it was made: the connect timeout counts from here.
    pub(super) created: Instant,
    /// When it first had a path.
    pub(super) connected_at: Option<Instant>,
    /// The current path, once there is one.
    pub(super) path: Option<Via>,
    pub(super) path_changes: u32,
    /// When the peer was last heard from (any authenticated datagram, or a relay frame).
    pub(super) last_heard: Instant,
    /// Since when our stream has been putting datagrams on a direct path with nothing heard
    /// from the peer in return.
    pub(super) awaiting: Option<Instant>,
    /// The last two things heard from the peer came less than [`STREAMING_GAP`] apart: a
    /// stream of traffic, whose stopping is a silence too.
    pub(super) streaming: bool,
    /// The direct path went quiet while our stream was sending (see `Node::silence`), and
    /// the node has looked for a new mapping of its own: until the peer is heard again.
    pub(super) silent: bool,
    /// Punching gave up (for the failure's reason).
    pub(super) gave_up: bool,
    /// The peer's datagrams that came before our side of the path was selected (the peer
    /// selects a round trip earlier, RFC 8445 §7.3.1.5, and may send at once): handed on
    /// right after `Connected`, at most [`EARLY_DATA_MAX`] of them.
    pub(super) early: Vec<Vec<u8>>,
    /// Offers sent (the first and the retries).
    pub(super) offers: u32,
    /// What runs on the path: asked for by the caller, named in both descriptions.
    pub(super) transport: Transport,
    /// Its machine, from the first path on (none for the node's own datagrams).
    pub(super) stream: Option<Stream>,
    /// `close` was called on a stream that closes gracefully: the code and reason to close
    /// with once it has.
    pub(super) closing: Option<(u32, String)>,
    /// The connection's close was sent or heard: what its release leaves behind to
    /// retransmit or acknowledge it (see the `linger` module).
    pub(super) close_role: Option<super::linger::Role>,
    /// A `send` found the stream full: `Writable` is owed once it has room.
    pub(super) stream_blocked: bool,
    pub(super) sent: Meter,
    pub(super) received: Meter,
}

impl Conn {
    pub(super) fn new(
        id: ConnectionId,
        peer: PeerId,
        service: u16,
        passive: bool,
        ufrag: String,
        exchange: Exchange,
        now: Instant,
    ) -> Conn {
        Conn {
            id,
            peer,
            service,
            passive,
            phase: if passive {
                Phase::Incoming
            } else {
                Phase::Queued
            },
            session: None,
            remote: None,
            ufrag,
            exchange,
            remote_key: None,
            keys: None,
            last_echo: None,
            punch_at: None,
            quiet_until: None,
            replan: false,
            signal_relay: None,
            untrickled: Vec::new(),
            resent_at: None,
            created: now,
            connected_at: None,
            path: None,
            path_changes: 0,
            last_heard: now,
            awaiting: None,
            streaming: false,
            silent: false,
            gave_up: false,
            early: Vec::new(),
            offers: 0,
            transport: Transport::Datagram,
            stream: None,
            closing: None,
            close_role: None,
            stream_blocked: false,
            sent: Meter::new(now),
            received: Meter::new(now),
        }
    }

    pub(super) fn agent(&self) -> Option<&Agent> {
        match &self.phase {
            Phase::Running(agent) => Some(agent),
            _ => None,
        }
    }

    pub(super) fn agent_mut(&mut self) -> Option<&mut Agent> {
        match &mut self.phase {
            Phase::Running(agent) => Some(agent),
            _ => None,
        }
    }

    pub(super) fn connected(&self) -> bool {
        self.connected_at.is_some()
    }

    /// When the connection ends unless something happens: the connect timeout before the
    /// first path, the idle timeout after.
    pub(super) fn deadline(&self, connect_timeout: Duration, idle_timeout: Duration) -> Instant {
        if self.connected() {
            self.last_heard + idle_timeout
        } else {
            self.created + connect_timeout
        }
    }

    /// The peer was heard from (an authenticated datagram or check, or a relay frame). After
    /// a silence the stream's retransmission timer, backed off while nothing came through,
    /// starts again, as after a path change: the path works again.
    pub(super) fn heard(&mut self, now: Instant) {
        self.streaming = now.saturating_duration_since(self.last_heard) < STREAMING_GAP;
        self.last_heard = now;
        self.awaiting = None;
        if std::mem::take(&mut self.silent) {
            if let Some(stream) = &mut self.stream {
                stream.path_changed(now);
            }
        }
    }

    /// When a direct path on which our stream sends has been silent long enough to look for
    /// a change of our own mapping (see `Node::silence`), unless that was done already for
    /// this silence.
    pub(super) fn silence_at(&self) -> Option<Instant> {
        if self.silent || self.stream.is_none() || self.path != Some(super::Via::Direct) {
            return None;
        }
        // Our traffic unanswered, or the peer's traffic stopped short (a receiver sends
        // nothing while nothing arrives, and its own mapping may be what changed).
        let since = match (self.awaiting, self.streaming) {
            (Some(sent), true) => sent.min(self.last_heard),
            (Some(sent), false) => sent,
            (None, true) => self.last_heard,
            (None, false) => return None,
        };
        let rtt = self
            .agent()
            .and_then(Agent::selected_rtt)
            .map_or(Duration::ZERO, |(srtt, _)| srtt);
        Some(since + SILENCE.max(rtt * 4))
    }

    /// Every deadline of the connection besides [`deadline`](Self::deadline).
    pub(super) fn timers(&self) -> impl Iterator<Item = Instant> + '_ {
        let agent = self.agent().and_then(|a| a.poll_timeout());
        let retry = match self.phase {
            Phase::Retrying { at } => Some(at),
            _ => None,
        };
        let stream = self.stream.as_ref().and_then(Stream::poll_timeout);
        [
            agent,
            retry,
            stream,
            self.silence_at(),
            self.quiet_until,
            self.signal_relay.map(|r| r.next_probe),
        ]
        .into_iter()
        .flatten()
    }
}
