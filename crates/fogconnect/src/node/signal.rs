//! The node's side of signaling: the connection's life (open, back-off, reopen), its frames in
//! the driving contract, and what the server tells us about sessions.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use fog_signal::client::Event as SignalEvent;
use fog_signal::msg::{ErrorCode, Rate, Transport};

use super::conn::{Conn, Phase};
use super::seal::{self, Keys, Role};
use super::{CloseReason, End, Event, FailReason, Node, Via};

/// What the driver tells the node about its signaling connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalInput<'a> {
    /// The connection the node asked for ([`SignalOutput::Open`]) is open.
    Opened,
    /// A text frame from the server.
    Frame(&'a str),
    /// The connection ended (either side closed it, it broke, or it never opened).
    Closed,
}

/// What the node asks of its signaling connection, drained with [`Node::poll_signal`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalOutput {
    /// Open a connection to the signaling server (at start, and again after a back-off when
    /// one ended); report the outcome with [`SignalInput::Opened`] or [`SignalInput::Closed`].
    Open,
    /// Send this text frame on the open connection.
    Frame(String),
    /// Close the connection (the server failed the handshake); report
    /// [`SignalInput::Closed`] once it is.
    Close,
}

/// The first wait before reopening a signaling connection that ended, and the longest.
const REOPEN_FIRST: Duration = Duration::from_secs(1);
const REOPEN_MAX: Duration = Duration::from_secs(30);

/// The wait before reopening a connection that was up when it ended, at most once per
/// [`QUICK_REOPEN_EVERY`]: the network change that cut it (a NAT that forgot its flows, a
/// move) usually moved our candidates too, and a peer can only learn them through the server,
/// so the back-off's full second would be most of the 2 s a path has to recover in. A server
/// that keeps ending our connections gets the ordinary back-off.
const REOPEN_QUICK: Duration = Duration::from_millis(100);
const QUICK_REOPEN_EVERY: Duration = Duration::from_secs(10);

/// A liveness probe of the signaling connection ([`Node::probe_signaling`]) unanswered for
/// this long, or [`PROBE_RTTS`] of the connection's round trips if longer, ends the
/// connection. A NAT that forgot our TCP flow (a conntrack flush, a reboot, a move) leaves
/// the WebSocket open on our side, and nothing tells us until we send: the frames the
/// server sent us meanwhile, a peer's new candidates among them, are lost, and our own go
/// nowhere, for seconds (the netns roaming test: 3.5-4.9 s after the flush, when the
/// transfer's close finally went out) or, behind a router that drops rather than resets,
/// for TCP's whole retransmission timeout.
const PROBE_TIMEOUT: Duration = Duration::from_millis(400);
const PROBE_RTTS: u32 = 4;
/// The most the probe's floor grows to, and what each pong in time takes off it (see
/// [`Link::probe_floor`]).
const PROBE_FLOOR_MAX: Duration = Duration::from_millis(3_200);
const PROBE_FLOOR_DECAY: Duration = Duration::from_millis(50);
/// At most one probe per this long: path changes come in bursts, and an idle node never
/// probes (it sees no path changes), so the server's own ping interval stays the only
/// traffic of a quiet connection.
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// While a connection streams, the server silent this long has the node probe the signaling
/// connection: a NAT that forgot our TCP flow without a path of ours noticing (its UDP flows
/// came back on the same ports) is found within this plus the probe's timeout. About one
/// ping a second while data flows, none while it does not.
const SIGNAL_QUIET: Duration = Duration::from_millis(800);

/// The frame rate a server that does not say its own is assumed to hold us to (fog-signal's
/// defaults).
const ASSUMED_RATE: Rate = Rate {
    frames_per_second: 20,
    burst: 40,
};

/// The signaling connection as the node sees it.
#[derive(Debug)]
pub(super) struct Link {
    state: State,
    /// The wait before the next reopen; doubles up to [`REOPEN_MAX`], back to
    /// [`REOPEN_FIRST`] once the server accepts us.
    backoff: Duration,
    out: VecDeque<SignalOutput>,
    /// When a lost connection was last reopened after [`REOPEN_QUICK`] only.
    quick_at: Option<Instant>,
    /// Our frames are paced under the server's rate limit, which drops the frames over it
    /// (an answer lost that way leaves its caller waiting) and closes a connection that keeps
    /// on: a token bucket of our own at nine tenths of the server's rate and half its burst,
    /// so that frames bunched together on the way still fit the server's. These are its
    /// tokens, as of `refilled`.
    tokens: f64,
    refilled: Option<Instant>,
    /// When the connection opened, until its first frame (a round trip: our hello, the
    /// server's challenge) gives `rtt`.
    opened_at: Option<Instant>,
    /// The connection's round trip, as last measured (the handshake, a probe's pong).
    rtt: Option<Duration>,
    /// A liveness probe is out: its pong must come by then.
    probe_deadline: Option<Instant>,
    /// When the last probe went.
    probed_at: Option<Instant>,
    /// When the server was last heard (or the connection opened).
    heard_at: Option<Instant>,
    /// The connections' application datagrams, sent and received, as of the later of
    /// `heard_at` and `probed_at`: more now means traffic since (`Node::data_count`).
    data_mark: u64,
    /// The connection is being closed because a probe went unanswered: the wait for it was
    /// the quick reopen's wait already, so the next one goes at once.
    probe_failed: bool,
    /// The least a probe waits for its pong: [`PROBE_TIMEOUT`] at first. A pong can be late
    /// because the server is slow (an overloaded fogd) rather than because the connection
    /// died, and a reconnect then costs the server more work and, before connections on the
    /// signaling relay were kept across it, cost those connections. So the floor doubles
    /// (up to [`PROBE_FLOOR_MAX`]) each time a probe fails, and comes back down by
    /// [`PROBE_FLOOR_DECAY`] with each pong that comes in time (slowly: a server slow in
    /// spells answers in time between them, and halving there had the next spell cost a
    /// reconnect again). The first death after a quiet spell is still noticed after 400 ms;
    /// a server that keeps missing its pongs meets growing patience instead of a reconnect
    /// a spell from every node at once. (A frame from the server while a probe is out shows
    /// the connection alive, since a NAT that forgot our flow passes nothing: the probe
    /// then waits a floor from that frame.)
    probe_floor: Duration,
}

/// How far below a whole token still counts as one (floating-point rounding).
const TOKEN_SLACK: f64 = 1e-6;

/// Our bucket for the server's `rate`: (frames per second, depth).
fn pace(rate: Rate) -> (f64, f64) {
    let per_second = (f64::from(rate.frames_per_second) * 0.9).max(0.1);
    let depth = (f64::from(rate.burst) / 2.0).max(1.0);
    (per_second, depth)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not asked for yet (the node has not started).
    Idle,
    /// Asked for, not open yet.
    Opening,
    Open,
    /// Ended; reopened at the instant.
    Down(Instant),
}

impl Default for Link {
    fn default() -> Self {
        Link {
            state: State::Idle,
            backoff: REOPEN_FIRST,
            out: VecDeque::new(),
            quick_at: None,
            tokens: 0.0,
            refilled: None,
            opened_at: None,
            rtt: None,
            probe_deadline: None,
            probed_at: None,
            heard_at: None,
            data_mark: 0,
            probe_failed: false,
            probe_floor: PROBE_TIMEOUT,
        }
    }
}

impl Link {
    /// The node started: ask for the connection unless the driver opened one already.
    pub(super) fn start(&mut self) {
        if self.state == State::Idle {
            self.state = State::Opening;
            self.out.push_back(SignalOutput::Open);
        }
    }

    pub(super) fn handle_timeout(&mut self, now: Instant) {
        if let State::Down(at) = self.state {
            if now >= at {
                self.state = State::Opening;
                self.out.push_back(SignalOutput::Open);
            }
        }
        if self.state == State::Open && self.probe_deadline.is_some_and(|t| t <= now) {
            // The probe went unanswered: the connection is dead to us. The driver closes it
            // and reports `Closed`, and we open a new one (at once if it had authenticated).
            self.probe_deadline = None;
            self.probe_failed = true;
            self.probe_floor = (self.probe_floor * 2).min(PROBE_FLOOR_MAX);
            if !self.out.contains(&SignalOutput::Close) {
                self.out.push_back(SignalOutput::Close);
            }
        }
    }

    /// The link's next deadline: a reopen, or a probe's.
    pub(super) fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Down(at) => Some(at),
            State::Open => self.probe_deadline,
            _ => None,
        }
    }

    /// Takes a token for one frame under `rate` at `now`, if there is one.
    fn take_token(&mut self, now: Instant, rate: Rate) -> bool {
        let (per_second, depth) = pace(rate);
        let since = self.refilled.unwrap_or(now);
        let elapsed = now.saturating_duration_since(since).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(depth);
        self.refilled = Some(now);
        // A token is whole to within rounding: the wait `paced_until` asks for is whole
        // microseconds, so that the token has come when it ends.
        if self.tokens < 1.0 - TOKEN_SLACK {
            return false;
        }
        self.tokens = (self.tokens - 1.0).max(0.0);
        true
    }

    /// When the next token comes under `rate`, while frames wait for one.
    pub(super) fn paced_until(&self, waiting: usize, rate: Rate) -> Option<Instant> {
        if self.state != State::Open || waiting == 0 || self.tokens >= 1.0 - TOKEN_SLACK {
            return None;
        }
        let (per_second, _) = pace(rate);
        // Rounded up to the next whole microsecond, and never zero: a deadline at `now` that
        // brings no token would spin.
        let micros = ((1.0 - self.tokens) / per_second * 1e6).ceil().max(1.0);
        self.refilled
            .map(|t| t + Duration::from_micros(micros as u64))
    }
}

impl Node {
    /// News of the signaling connection: it opened, a frame arrived, it ended. Drain the node
    /// afterwards as after any input.
    pub fn handle_signal(&mut self, now: Instant, input: SignalInput<'_>) {
        self.now = self.now.max(now);
        match input {
            SignalInput::Opened => {
                self.signal.state = State::Open;
                // A new connection starts with the server's whole burst.
                self.signal.tokens = pace(ASSUMED_RATE).1;
                self.signal.refilled = Some(now);
                self.signal.out.retain(|o| *o != SignalOutput::Open);
                self.signal.opened_at = Some(now);
                self.signal.heard_at = Some(now);
                self.signal.data_mark = self.data_count();
                self.signal.probe_deadline = None;
                self.client.handle_connected(now);
            }
            SignalInput::Frame(frame) => {
                if self.signal.state == State::Open {
                    self.signal.heard_at = Some(now);
                    self.signal.data_mark = self.data_count();
                    if let Some(opened) = self.signal.opened_at.take() {
                        self.signal.rtt = Some(now.saturating_duration_since(opened));
                    }
                    let pings = self.client.pings_waiting();
                    self.client.handle_frame(now, frame);
                    // Another frame than the pong while a probe is out: the server is slow,
                    // not gone (a NAT that forgot our flow passes nothing), and the pong
                    // comes behind what it sent before it.
                    let link = &mut self.signal;
                    if let (Some(deadline), true) =
                        (link.probe_deadline, self.client.pings_waiting() == pings)
                    {
                        link.probe_deadline = Some(deadline.max(now + link.probe_floor));
                    }
                }
            }
            SignalInput::Closed => self.signaling_lost(now),
        }
        self.progress(now);
        self.drain_agents();
    }

    /// The next thing the signaling connection must do: open, send a frame, close. Drained
    /// after the transmits and before the events, like them until `None`.
    pub fn poll_signal(&mut self) -> Option<SignalOutput> {
        if let Some(out) = self.signal.out.pop_front() {
            return Some(out);
        }
        if self.signal.state != State::Open || self.client.frames_waiting() == 0 {
            return None;
        }
        // The server does not count answers and refusals of offers to us.
        if self.client.next_frame_counts() {
            let rate = self.signal_rate();
            if !self.signal.take_token(self.now, rate) {
                return None;
            }
        }
        self.client.poll_frame().map(SignalOutput::Frame)
    }

    /// The signaling link's deadlines: a reopen, a probe's timeout, or the next probe while a
    /// connection streams ([`SIGNAL_QUIET`]).
    pub(super) fn signal_deadline(&self) -> Option<Instant> {
        let link = self.signal.deadline();
        match (link, self.quiet_probe_at()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The signaling link's timers at `now`.
    pub(super) fn signal_timeout(&mut self, now: Instant) {
        self.signal.handle_timeout(now);
        if self.quiet_probe_at().is_some_and(|t| t <= now) {
            self.probe_signaling(now);
        }
    }

    /// When the server's silence under traffic asks for a probe: only while application
    /// data moved since the server was last heard or probed, so a node without traffic
    /// (keepalives and consent checks are not traffic) arms nothing.
    fn quiet_probe_at(&self) -> Option<Instant> {
        let link = &self.signal;
        if link.state != State::Open
            || link.probe_deadline.is_some()
            || !self.client.is_authenticated()
            || self.data_count() == link.data_mark
        {
            return None;
        }
        let at = link.heard_at.max(link.probed_at)? + SIGNAL_QUIET;
        // `probe_signaling` probes at most once per PROBE_EVERY.
        Some(link.probed_at.map_or(at, |p| at.max(p + PROBE_EVERY)))
    }

    /// Application datagrams sent and received on every connection so far (a count that
    /// only tells whether there was traffic since it was last read).
    ///
    /// Connections carried by the signaling relay do not count: their data goes through the
    /// signaling connection itself, queued ahead of a ping, so a long one-way send there
    /// would delay the pong past its timeout, and the reconnect that follows ends them.
    fn data_count(&self) -> u64 {
        self.conns
            .values()
            .filter(|c| c.path != Some(Via::Signaling))
            .map(|c| c.sent.datagrams.wrapping_add(c.received.datagrams))
            .fold(0, u64::wrapping_add)
    }

    /// Something we saw says the network under us may have changed (a direct path went
    /// silent, a path moved): ask the server for a pong, unless a probe is out or went less
    /// than [`PROBE_EVERY`] ago. A connection that a NAT forgot is then noticed within the
    /// probe's timeout ([`PROBE_TIMEOUT`]) and replaced, instead of when we next have
    /// something to say (the seconds of the roaming test), and the peer's candidates it
    /// missed are asked for again once we are back (`Authenticated`).
    pub(super) fn probe_signaling(&mut self, now: Instant) {
        let link = &self.signal;
        if link.state != State::Open
            || link.probe_deadline.is_some()
            || link
                .probed_at
                .is_some_and(|t| now.saturating_duration_since(t) < PROBE_EVERY)
        {
            return;
        }
        // Frames queued ahead of the ping wait for the pacer first.
        let (per_second, _) = pace(self.signal_rate());
        let queued = self.client.frames_waiting() as f64 / per_second;
        let Ok(_) = self.client.ping(now) else {
            return;
        };
        let rtt = self.signal.rtt.unwrap_or(Duration::ZERO);
        let timeout =
            self.signal.probe_floor.max(rtt * PROBE_RTTS) + Duration::from_secs_f64(queued);
        self.signal.probed_at = Some(now);
        self.signal.data_mark = self.data_count();
        self.signal.probe_deadline = Some(now + timeout);
    }

    /// The frame rate the server holds us to.
    pub(super) fn signal_rate(&self) -> Rate {
        self.client.server_rate().unwrap_or(ASSUMED_RATE)
    }

    /// The signaling connection ended: a new client for the next one, after a back-off.
    /// What needed the server fails; connections with a UDP path go on.
    fn signaling_lost(&mut self, now: Instant) {
        if matches!(self.signal.state, State::Down(_)) {
            return;
        }
        let was_up = self.client.is_authenticated();
        let quick = was_up
            && self
                .signal
                .quick_at
                .is_none_or(|at| now.saturating_duration_since(at) >= QUICK_REOPEN_EVERY);
        let probe_failed = std::mem::take(&mut self.signal.probe_failed);
        if quick {
            self.signal.quick_at = Some(now);
            let wait = if probe_failed {
                Duration::ZERO
            } else {
                REOPEN_QUICK
            };
            self.signal.state = State::Down(now + wait);
        } else {
            self.signal.state = State::Down(now + self.signal.backoff);
            self.signal.backoff = (self.signal.backoff * 2).min(REOPEN_MAX);
        }
        self.signal.out.clear();
        self.signal.probe_deadline = None;
        self.signal.opened_at = None;
        let seed = super::random_bytes(&mut self.rng);
        self.client = super::signal_client(&self.config, seed);
        self.relay_requested = false;
        // A connected connection keeps its session: the server holds an answered session for
        // a while (fog-signal's `rejoin_grace`) for the peer that left, so the candidates of
        // a network change can still be trickled once we are back, and a connection carried
        // by the signaling relay goes on over the new signaling connection (its transport
        // resends what was lost meanwhile). Closing those at once made every false alarm
        // (a pong late from a busy server) an outage for them; if the server forgot the
        // session after all, it says so, or the idle timeout ends the connection.
        let keep = |conn: &Conn| conn.connected() && conn.path.is_some();
        let conns = &self.conns;
        self.by_session
            .retain(|_, id| conns.get(id).is_some_and(keep));
        self.by_request.clear();
        self.cancelled.clear();
        for (_, name) in std::mem::take(&mut self.lookups) {
            self.events.push_back(Event::LookupFailed { name });
        }
        let ids: Vec<_> = self.conns.keys().copied().collect();
        for id in ids {
            let Some(conn) = self.conns.get_mut(&id) else {
                continue;
            };
            if keep(conn) {
                continue;
            }
            conn.session = None;
            let end = match (&conn.phase, conn.path) {
                // Not offered yet: it goes once we are back, within its timeout.
                (Phase::Queued | Phase::Retrying { .. }, _) => None,
                (Phase::Running(_), Some(Via::Signaling)) => Some(End::Closed {
                    reason: CloseReason::SignalingLost,
                    by_peer: false,
                }),
                // Punching may still find a path without the server.
                (Phase::Running(_), _) => None,
                _ => Some(End::Failed(FailReason::SignalingLost)),
            };
            if let Some(end) = end {
                self.end(now, id, end);
            }
        }
        if was_up || self.started {
            self.events.push_back(Event::SignalingDown);
        }
    }

    /// Hands the signaling client's events on.
    pub(super) fn drain_signal_events(&mut self, now: Instant) {
        while let Some(event) = self.client.poll_event() {
            self.handle_signal_event(now, event);
        }
    }

    fn handle_signal_event(&mut self, now: Instant, event: SignalEvent) {
        match event {
            SignalEvent::Authenticated { .. } => {
                self.signal.backoff = REOPEN_FIRST;
                self.events.push_back(Event::SignalingUp);
                if self.config.turn.is_some() && !self.relay_requested {
                    self.relay_requested = self.client.request_relay().is_ok();
                }
                // Back after an absence: what either side trickled meanwhile went nowhere, so
                // every live session gets our candidates again and asks for the peer's.
                let live: Vec<_> = self.by_session.values().copied().collect();
                for id in live {
                    self.resend_candidates(now, id, true);
                }
            }
            SignalEvent::Rtt(rtt) => {
                self.signal.rtt = Some(rtt);
                if self.signal.probe_deadline.take().is_some() {
                    let link = &mut self.signal;
                    link.probe_floor = link
                        .probe_floor
                        .saturating_sub(PROBE_FLOOR_DECAY)
                        .max(PROBE_TIMEOUT);
                }
            }
            SignalEvent::Failed { .. } => {
                self.signal.out.push_back(super::SignalOutput::Close);
            }
            SignalEvent::RelayCredentials {
                username, password, ..
            } => self.allocate(now, username, password),
            SignalEvent::LookupResult {
                request,
                peer,
                online,
            } => {
                if let Some(name) = self.lookups.remove(&request) {
                    self.events
                        .push_back(Event::LookupResult { name, peer, online });
                }
            }
            SignalEvent::OfferSent { request, session } => {
                if let Some((code, reason)) = self.cancelled.remove(&request) {
                    let _ = self.client.close(session, code, &reason);
                    return;
                }
                let Some(id) = self.by_request.remove(&request) else {
                    return;
                };
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                conn.session = Some(session);
                conn.phase = Phase::AwaitingAnswer;
                self.by_session.insert(session, id);
                let (peer, untrickled) = (conn.peer, std::mem::take(&mut conn.untrickled));
                for c in untrickled {
                    self.trickle(session, peer, &c);
                }
            }
            SignalEvent::Offer {
                session,
                from,
                description,
            } => self.incoming(now, session, from, description),
            SignalEvent::Answer {
                session,
                description,
                ..
            } => {
                let Some(&id) = self.by_session.get(&session) else {
                    return;
                };
                let Some(conn) = self.conns.get(&id) else {
                    return;
                };
                if !matches!(conn.phase, Phase::AwaitingAnswer) {
                    return;
                }
                let (peer, offer_key) = (conn.peer, conn.exchange.public());
                // The answer must be the peer's, to our offer, in this session.
                let role = Role::Answer {
                    from: peer,
                    to: self.peer_id(),
                    session,
                    offer_key: &offer_key,
                };
                let Some(answer_key) = self.verified(&role, peer, &description) else {
                    return;
                };
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                let keys = Keys::derive(
                    &conn.exchange,
                    &answer_key,
                    session,
                    self.config.key.peer_id(),
                    peer,
                    true,
                );
                conn.remote_key = Some(answer_key);
                let mut description = description;
                cap_candidates(&mut description, &mut self.counters);
                conn.remote = Some(description);
                self.keyed(id, keys);
                self.build_agent(now, id);
            }
            SignalEvent::Nat {
                session,
                nat,
                signature,
            } => {
                let me = self.peer_id();
                let Some((id, conn)) = self
                    .by_session
                    .get(&session)
                    .and_then(|&id| Some((id, self.conns.get_mut(&id)?)))
                else {
                    return;
                };
                let transcript = seal::nat_transcript(conn.peer, me, session, &nat);
                if !conn.peer.verify(&transcript, &signature.0) {
                    self.counters.bad_signatures += 1;
                    return;
                }
                let Some(remote) = &mut conn.remote else {
                    return;
                };
                if remote.nat == Some(nat) {
                    return;
                }
                remote.nat = Some(nat);
                self.replan(now, id);
            }
            SignalEvent::Candidate {
                session,
                candidate: Some(candidate),
                signature,
            } => {
                let me = self.peer_id();
                let Some(conn) = self
                    .by_session
                    .get(&session)
                    .and_then(|id| self.conns.get_mut(id))
                else {
                    return;
                };
                // Only what the peer signed for this session: the server may not add
                // addresses for us to check.
                let transcript = seal::candidate_transcript(conn.peer, me, session, &candidate);
                if !signature.is_some_and(|s| conn.peer.verify(&transcript, &s.0)) {
                    self.counters.bad_signatures += 1;
                    return;
                }
                // A peer's candidates are bounded, trickled ones included: beyond the bound
                // they are dropped, so a peer cannot grow our pair table without end.
                let Some(remote) = &mut conn.remote else {
                    return;
                };
                // One sent again (the peer came back to signaling) is not counted twice, but
                // still gives its failed pairs another round.
                let known = remote
                    .candidates
                    .iter()
                    .any(|c| c.addr == candidate.addr && c.kind == candidate.kind);
                if !known {
                    if remote.candidates.len() >= MAX_REMOTE_CANDIDATES {
                        self.counters.candidates_dropped += 1;
                        return;
                    }
                    remote.candidates.push(candidate);
                }
                if let Some(agent) = conn.agent_mut() {
                    agent.add_remote(now, super::candidates::from_wire(&candidate));
                }
                // A verified port mapping of the peer's makes it reachable: plan again.
                if candidate.kind == fog_signal::msg::CandidateKind::Mapped {
                    if let Some(&id) = self.by_session.get(&session) {
                        self.replan(now, id);
                    }
                }
                self.relay_permissions(now);
            }
            SignalEvent::Candidate {
                session,
                candidate: None,
                ..
            } => {
                if let Some(&id) = self.by_session.get(&session) {
                    self.resend_asked(now, id);
                }
            }
            SignalEvent::Relay { session, data } => self.handle_relay_frame(now, session, &data),
            SignalEvent::PunchAt { session, at } => {
                let Some(conn) = self
                    .by_session
                    .get(&session)
                    .and_then(|id| self.conns.get_mut(id))
                else {
                    return;
                };
                conn.punch_at = Some(at);
                let passive = conn.passive;
                if let Some(agent) = conn.agent_mut() {
                    agent.start(now);
                    if passive {
                        conn.quiet_until = Some(at);
                    }
                }
            }
            SignalEvent::Error {
                request: Some(request),
                code,
                message,
            } => {
                self.cancelled.remove(&request);
                if let Some(name) = self.lookups.remove(&request) {
                    self.events.push_back(Event::LookupFailed { name });
                }
                let Some(id) = self.by_request.remove(&request) else {
                    return;
                };
                let reason = match code {
                    ErrorCode::UnknownPeer => FailReason::PeerOffline,
                    ErrorCode::TooManyPending
                    | ErrorCode::TooManySessions
                    | ErrorCode::RateLimited
                    | ErrorCode::ServerFull => {
                        // A limit of the server's: the offer goes again a little later.
                        let reason = FailReason::ServerLimit {
                            code: code.code(),
                            message,
                        };
                        self.retry_offer(now, id, reason);
                        return;
                    }
                    _ => FailReason::Signaling {
                        code: code.code(),
                        message,
                    },
                };
                self.end(now, id, End::Failed(reason));
            }
            SignalEvent::SessionClosed {
                session,
                reason,
                code,
            } => {
                let Some(id) = self.by_session.remove(&session) else {
                    return;
                };
                let Some(conn) = self.conns.get_mut(&id) else {
                    return;
                };
                conn.session = None;
                match code {
                    Some(code) => self.closed_by_peer(now, id, code, reason),
                    None if !conn.connected() => {
                        self.end(now, id, End::Failed(FailReason::SessionEnded { reason }));
                    }
                    None if conn.path == Some(Via::Signaling) => self.end(
                        now,
                        id,
                        End::Closed {
                            reason: CloseReason::SignalingLost,
                            by_peer: false,
                        },
                    ),
                    // The path does not need the server.
                    None => {}
                }
            }
            _ => {}
        }
    }

    /// A peer offers a connection: a new handle, accepted at once or waiting for the
    /// application; refused when the node is full.
    fn incoming(
        &mut self,
        now: Instant,
        session: fog_signal::msg::SessionId,
        from: fog_signal::PeerId,
        description: fog_signal::msg::Description,
    ) {
        if self.by_session.contains_key(&session) {
            return;
        }
        // The offer must be `from`'s, made for us; anything else (the server forged or
        // altered it, or it was meant for someone else) is dropped unanswered.
        let role = Role::Offer {
            from,
            to: self.peer_id(),
        };
        let Some(offer_key) = self.verified(&role, from, &description) else {
            return;
        };
        if self.conns.len() >= self.config.max_connections {
            let _ = self
                .client
                .close(session, super::REFUSED_FULL, "too many connections");
            return;
        }
        let pending = self
            .conns
            .values()
            .filter(|c| matches!(c.phase, Phase::Incoming | Phase::Accepted))
            .count();
        if pending >= self.config.max_pending_incoming {
            let _ = self
                .client
                .close(session, super::REFUSED_BUSY, "too many offers waiting");
            return;
        }
        // The transport the caller asked for, which we must run.
        let transport = description
            .transports
            .first()
            .cloned()
            .unwrap_or(Transport::Datagram);
        // A node that runs RTC answers browsers too (their offers must carry the DTLS
        // fingerprint the browser signed).
        let runs = match &transport {
            Transport::Browser => {
                self.config.transports.contains(&Transport::Rtc) && description.rtc.is_some()
            }
            t => super::transport::supported(t) && self.config.transports.contains(t),
        };
        if !runs {
            let why = format!("transport {} not run here", String::from(transport));
            let _ = self.client.close(session, super::REFUSED_TRANSPORT, &why);
            return;
        }
        let mut description = description;
        cap_candidates(&mut description, &mut self.counters);
        let id = self.new_id();
        let (ufrag, exchange) = (self.ufrag(), self.exchange());
        let service = description.service;
        let mut conn = Conn::new(id, from, service, true, ufrag, exchange, now);
        conn.transport = transport.clone();
        conn.session = Some(session);
        conn.remote_key = Some(offer_key);
        conn.remote = Some(description);
        self.conns.insert(id, conn);
        self.by_session.insert(session, id);
        self.events.push_back(Event::Incoming {
            id,
            peer: from,
            service,
            transport,
        });
        if self.config.accept == super::AcceptPolicy::All {
            if let Some(conn) = self.conns.get_mut(&id) {
                conn.phase = Phase::Accepted;
            }
        }
    }
}

/// The most candidates kept of a peer's description and trickles.
pub(super) const MAX_REMOTE_CANDIDATES: usize = 64;

/// Keeps the first [`MAX_REMOTE_CANDIDATES`] of a description (after its signature verified:
/// what was signed is what the peer sent), counting the rest.
fn cap_candidates(description: &mut fog_signal::msg::Description, counters: &mut super::Counters) {
    let extra = description
        .candidates
        .len()
        .saturating_sub(MAX_REMOTE_CANDIDATES);
    counters.candidates_dropped += extra as u64;
    description.candidates.truncate(MAX_REMOTE_CANDIDATES);
}
