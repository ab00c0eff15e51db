//! The signaling server machine: many connections, frames in, frames and closes out.
//!
//! The driver (fogd's WebSocket loop, or the simulator's reliable channel) owns the connections.
//! It reports each one with [`Server::handle_connect`], each text frame with
//! [`Server::handle_frame`] and the end with [`Server::handle_disconnect`], then drains
//! [`Server::poll_output`] and re-arms its timer from [`Server::poll_timeout`]. After an
//! [`Output::Close`] the server has already forgotten the connection; the driver sends the close
//! frame and drops it.
//!
//! What the server guarantees, and the tests check:
//! - offers, answers and candidates flow only between authenticated peers, and only within a
//!   session the server opened for an offer: a description reaches the one peer it is for;
//! - lookups answer "online or not" and the key, never an address;
//! - an alias belongs to the first key that proves it, for the server's lifetime;
//! - a challenge is used once and expires with the auth timeout; a client nonce seen within the
//!   auth timeout is refused as a replay;
//! - every limit in [`Limits`] holds, and no input panics.
//!
//! # In a cluster
//!
//! With [`ServerConfig::cluster`] on, the machine is one of several sharing presence and aliases
//! through the driver (fogd carries them over Redis). It still never blocks and never sees the
//! bus: what it cannot answer from its own peers becomes a [`ClusterOutput`] (drained with
//! [`Server::poll_cluster`]) and the driver answers later with [`Server::handle_resolved`],
//! [`Server::handle_claimed`], [`Server::handle_forwarded`] or [`Server::handle_unreachable`].
//! A session between a local and a remote peer lives on both instances; each keeps the half its
//! own peer needs, and frames for the remote peer leave as [`ClusterOutput::Forward`] carrying
//! the very [`ServerMsg`] the remote instance hands its peer (after checking it against its
//! own half of the session); the offer that opens such a session leaves as
//! [`ClusterOutput::Offer`], whose delivery report decides between `offer_sent` and
//! `unknown_peer`. Every query has a deadline ([`Limits::cluster_query_timeout`]) and
//! there are at most [`Limits::max_cluster_queries`] of them; over that a request is refused
//! with `server_full` and a reason.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac as _};
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use crate::identity::{KeyPair, PeerId};
use crate::msg::{
    self, ClientMsg, Description, ErrorCode, MAX_CLOSE_REASON, Nonce, PROTOCOL_VERSION, RequestId,
    ServerMsg, SessionId,
};

/// A connection, named by the driver. Never reused while the server knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this text frame on `conn`.
    Send {
        /// The connection.
        conn: ConnId,
        /// The JSON text frame.
        frame: String,
    },
    /// Close `conn` with this WebSocket close code (RFC 6455 §7.4) after sending what came before.
    Close {
        /// The connection.
        conn: ConnId,
        /// 1008 policy violation, 1009 too big, 1002 protocol error, 1013 try again later,
        /// 1000 replaced by a newer connection of the same peer.
        code: u16,
        /// A short reason for the close frame.
        reason: String,
    },
}

/// A question the machine asked the cluster, named so that its answer finds its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(pub u64);

/// Whom a [`ClusterOutput::Resolve`] asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A peer by key.
    Peer(PeerId),
    /// A peer by alias (lowercase).
    Alias(String),
}

/// What the driver must do with the rest of the cluster (only with [`ServerConfig::cluster`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterOutput {
    /// Find out whether `target` is online on some instance; answer with
    /// [`Server::handle_resolved`] (at once with "offline" when the cluster is unreachable).
    Resolve {
        /// Names the answer.
        query: QueryId,
        /// Whom to look for.
        target: Target,
    },
    /// Carry an offer (`frame`, an encoded [`ServerMsg::Offer`]) to `peer` on whichever instance
    /// holds it, and say whether one took it with [`Server::handle_resolved`] (`online` true when
    /// delivered): the lookup and the delivery in one step.
    Offer {
        /// Names the answer.
        query: QueryId,
        /// The remote answerer.
        peer: PeerId,
        /// The offer its instance hands it.
        frame: String,
    },
    /// Carry `frame` (an encoded [`ServerMsg`]) to `peer` on whichever instance holds it; when
    /// none does, say so with [`Server::handle_unreachable`].
    Forward {
        /// The remote peer.
        peer: PeerId,
        /// The frame its instance hands it.
        frame: String,
    },
    /// Claim `alias` for `peer` cluster-wide, first come first served; answer with
    /// [`Server::handle_claimed`].
    ClaimAlias {
        /// Names the answer.
        query: QueryId,
        /// The claimant.
        peer: PeerId,
        /// The alias (lowercase, valid).
        alias: String,
    },
    /// `peer` is now online here (`true`) or no longer (`false`): publish or withdraw it.
    Presence {
        /// The peer.
        peer: PeerId,
        /// Online here.
        online: bool,
    },
}

/// A request waiting for the cluster's answer.
#[derive(Debug)]
enum Query {
    Lookup {
        conn: ConnId,
        id: RequestId,
    },
    /// An offer sent to another instance: `offer_sent` waits for the cluster to say it arrived.
    Offer {
        conn: ConnId,
        me: PeerId,
        id: RequestId,
        session: SessionId,
    },
    /// An alias asked for in `auth`: the welcome waits for the claim.
    Welcome {
        conn: ConnId,
        peer: PeerId,
        alias: String,
    },
    Register {
        conn: ConnId,
        peer: PeerId,
        id: RequestId,
        alias: String,
    },
}

/// WebSocket close codes (RFC 6455 §7.4.1).
mod close {
    pub(super) const NORMAL: u16 = 1000;
    pub(super) const PROTOCOL: u16 = 1002;
    pub(super) const POLICY: u16 = 1008;
    pub(super) const TOO_BIG: u16 = 1009;
    pub(super) const TRY_AGAIN: u16 = 1013;
}

/// The server's limits. Each default is stated and chosen for a 10,000-peer `fogd`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Open connections, authenticated or not (default 20,000).
    pub max_connections: usize,
    /// Authenticated peers (default 16,384).
    pub max_peers: usize,
    /// Largest frame in bytes (default 16 KiB: an offer with 64 candidates is under 8 KiB).
    pub max_frame_len: usize,
    /// Sustained frames per second per connection (default 20). Answers and refusals of
    /// offers waiting for the connection's peer do not count: a peer that many call answers
    /// them as fast as they come.
    pub frames_per_second: u32,
    /// Token-bucket depth: frames allowed in a burst (default 40).
    pub burst: u32,
    /// Frames over the limit tolerated, after the one `rate_limited` error, before the close
    /// (default 40).
    pub flood_tolerance: u32,
    /// Unanswered offers to one peer, and from one peer (default 8 each).
    pub max_pending_offers: usize,
    /// Time from connect to a successful `auth`; also a challenge's lifetime (default 10 s).
    pub auth_timeout: Duration,
    /// Time an offer waits for its answer (default 30 s).
    pub offer_timeout: Duration,
    /// Sessions one peer takes part in, offered or answered (default 4,096: a node's own
    /// connection limit, `NodeConfig::max_connections`). An answered session lives as long
    /// as both its peers stay (see [`Server`]), so this, and [`Limits::max_sessions`], are
    /// what bound the sessions a peer can hold open: a new offer over either is refused with
    /// `too_many_sessions` (this one) or `server_full`.
    pub max_sessions_per_peer: usize,
    /// Sessions in all (default 262,144: about 60 MiB of them).
    pub max_sessions: usize,
    /// Time an answered session waits for a peer whose connection ended to authenticate
    /// again before it closes with "peer left" (default 10 s). A node whose network changed
    /// under a live connection usually loses its signaling connection too, and comes back
    /// within seconds to trickle its new candidates in the same session.
    pub rejoin_grace: Duration,
    /// Largest datagram carried by the relay over signaling, decoded (default 1,400 bytes: what
    /// fits a UDP datagram on the usual paths).
    pub max_relay_datagram: usize,
    /// Aliases one key may hold (default 4).
    pub max_aliases_per_peer: usize,
    /// Aliases the server remembers in all (default 100,000).
    pub max_aliases: usize,
    /// Interval of the server's RTT-measuring pings (default 15 s).
    pub ping_interval: Duration,
    /// Added to the larger one-way delay when choosing the punch instant (default 50 ms).
    pub punch_margin: Duration,
    /// RTT assumed for a peer never measured (default 200 ms).
    pub default_rtt: Duration,
    /// Questions to the cluster waiting for an answer (default 4,096).
    pub max_cluster_queries: usize,
    /// Time the cluster has to answer one before it counts as "offline" (default 2 s).
    pub cluster_query_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 20_000,
            max_peers: 16_384,
            max_frame_len: 16 * 1024,
            frames_per_second: 20,
            burst: 40,
            flood_tolerance: 40,
            max_pending_offers: 8,
            auth_timeout: Duration::from_secs(10),
            offer_timeout: Duration::from_secs(30),
            max_sessions_per_peer: 4_096,
            max_sessions: 262_144,
            rejoin_grace: Duration::from_secs(10),
            max_relay_datagram: 1_400,
            max_aliases_per_peer: 4,
            max_aliases: 100_000,
            ping_interval: Duration::from_secs(15),
            punch_margin: Duration::from_millis(50),
            default_rtt: Duration::from_millis(200),
            max_cluster_queries: 4_096,
            cluster_query_timeout: Duration::from_secs(2),
        }
    }
}

/// Relay credentials in coturn's `use-auth-secret` scheme (issue 5 builds the relay).
#[derive(Debug, Clone)]
pub struct RelayConfig {
    /// The secret shared with the TURN server.
    pub secret: Vec<u8>,
    /// `turn:` URLs handed to clients.
    pub urls: Vec<String>,
    /// Credential lifetime.
    pub ttl: Duration,
    /// One instant and the Unix time it corresponds to: the machine has no wall clock.
    pub epoch: (Instant, u64),
}

/// Everything a server needs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The server's identity, part of every auth transcript.
    pub key: KeyPair,
    /// The name clients dial (the host of `wss://host/ws`), part of every auth transcript.
    pub realm: String,
    /// Seeds nonces and session ids (the driver passes OS randomness; tests a constant).
    pub seed: [u8; 32],
    /// Limits.
    pub limits: Limits,
    /// Relay credentials, if a relay is configured.
    pub relay: Option<RelayConfig>,
    /// One instance of a cluster (see the [module docs](self#in-a-cluster)); off by default.
    pub cluster: bool,
}

impl ServerConfig {
    /// A configuration with default limits and no relay.
    pub fn new(key: KeyPair, realm: impl Into<String>, seed: [u8; 32]) -> Self {
        ServerConfig {
            key,
            realm: realm.into(),
            seed,
            limits: Limits::default(),
            relay: None,
            cluster: false,
        }
    }
}

/// Where a connection is in the handshake; each phase holds what is valid in it.
#[derive(Debug)]
enum Phase {
    AwaitHello,
    AwaitAuth {
        client_nonce: Nonce,
        server_nonce: Nonce,
        sent_at: Instant,
    },
    Authenticated {
        peer: PeerId,
    },
}

#[derive(Debug)]
struct Conn {
    phase: Phase,
    /// Auth deadline while unauthenticated.
    deadline: Instant,
    tokens: f64,
    refilled: Instant,
    strikes: u32,
    rtt: Option<Duration>,
    ping: Option<(u32, Instant)>,
}

#[derive(Debug)]
struct Session {
    offerer: PeerId,
    answerer: PeerId,
    answered: bool,
    /// The offer's deadline ([`Limits::offer_timeout`]); its timer goes with the answer.
    expires: Instant,
    /// The participant on another instance of the cluster, if one is.
    remote: Option<PeerId>,
    /// An offer to another instance whose `offer_sent` waits for the cluster (or for the first
    /// frame of the session from the other side, which proves delivery): the offerer's
    /// connection and request.
    unconfirmed: Option<(ConnId, RequestId)>,
    /// Since when a participant's connection is gone, while the session waits for it to
    /// authenticate again ([`Limits::rejoin_grace`]).
    away_since: Option<Instant>,
}

impl Session {
    /// The other participant, if `me` is one.
    fn other(&self, me: PeerId) -> Option<PeerId> {
        if self.offerer == me {
            Some(self.answerer)
        } else if self.answerer == me {
            Some(self.offerer)
        } else {
            None
        }
    }
}

/// Why a timer is set; fired entries are checked against current state (stale ones are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The connection must be authenticated by now.
    Auth(ConnId),
    /// Send the next RTT ping.
    Ping(ConnId),
    /// The session's offer runs out unanswered.
    Session(SessionId),
    /// A participant that left the session has had its grace to come back.
    Rejoin(SessionId),
    /// Forget client nonces older than the auth timeout.
    Nonces,
    /// The cluster must have answered this query by now.
    Query(QueryId),
}

/// The signaling server machine. See the [module docs](self).
///
/// # How long a session lives
///
/// An offer waits [`Limits::offer_timeout`] for its answer. An answered session then lives
/// as long as both its peers do: it ends when either peer closes it, or when a peer's
/// connection ends and it does not authenticate again within [`Limits::rejoin_grace`]
/// ("peer left"). It used to expire 120 s after the answer (or the last `relay` frame),
/// which cut off what a long-lived connection still needs the server for: the candidates
/// it trickles after a move, and the close that must reach a peer whose path is gone
/// (issues 15 and 16). The other way out, a keepalive frame from each node for each live
/// session, costs every client (the browser's too) a frame per session per interval out of
/// its 20 a second, and asks nothing the server does not know already: whether both peers
/// are still here.
///
/// Memory stays bounded without a lifetime: every session has a peer on this instance, a
/// peer takes part in at most [`Limits::max_sessions_per_peer`] sessions, the server holds
/// at most [`Limits::max_sessions`], and a new offer over either is refused (typed). A
/// node closes the sessions of the connections it ends. In a cluster, the half of a session
/// whose other peer is remote ends when the other instance says so (its peer closed or
/// left), when a forward finds no instance, or with the local peer.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    server_id: PeerId,
    rng: ChaCha8Rng,
    conns: BTreeMap<ConnId, Conn>,
    peers: BTreeMap<PeerId, ConnId>,
    aliases: BTreeMap<String, PeerId>,
    alias_count: BTreeMap<PeerId, usize>,
    sessions: BTreeMap<SessionId, Session>,
    /// The sessions each peer takes part in (both of a session's peers, local or remote).
    of_peer: BTreeMap<PeerId, BTreeSet<SessionId>>,
    pending_to: BTreeMap<PeerId, usize>,
    pending_from: BTreeMap<PeerId, usize>,
    /// Client nonces seen within the auth timeout, oldest first, and as a set.
    nonce_log: VecDeque<(Instant, Nonce)>,
    nonces: BTreeSet<Nonce>,
    timers: BTreeSet<(Instant, Timer)>,
    out: VecDeque<Output>,
    next_ping_id: u32,
    /// Requests waiting for the cluster, and what the machine asks it.
    queries: BTreeMap<QueryId, (Instant, Query)>,
    next_query: u64,
    cluster_out: VecDeque<ClusterOutput>,
}

impl Server {
    /// A server with no connections.
    pub fn new(config: ServerConfig) -> Self {
        Server {
            server_id: config.key.peer_id(),
            rng: ChaCha8Rng::from_seed(config.seed),
            config,
            conns: BTreeMap::new(),
            peers: BTreeMap::new(),
            aliases: BTreeMap::new(),
            alias_count: BTreeMap::new(),
            sessions: BTreeMap::new(),
            of_peer: BTreeMap::new(),
            pending_to: BTreeMap::new(),
            pending_from: BTreeMap::new(),
            nonce_log: VecDeque::new(),
            nonces: BTreeSet::new(),
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            next_ping_id: 1,
            queries: BTreeMap::new(),
            next_query: 1,
            cluster_out: VecDeque::new(),
        }
    }

    /// The server's identity.
    pub fn peer_id(&self) -> PeerId {
        self.server_id
    }

    /// Open connections.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// Authenticated peers online.
    pub fn peers(&self) -> usize {
        self.peers.len()
    }

    /// Sessions held, offered or answered (bounded by [`Limits::max_sessions`]).
    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Deadlines armed (pings, sessions, handshakes, nonce pruning): bounded by what the
    /// server holds, never by how many frames it forwarded.
    pub fn deadlines(&self) -> usize {
        self.timers.len()
    }

    /// Whether `peer` is authenticated on some connection.
    pub fn is_online(&self, peer: &PeerId) -> bool {
        self.peers.contains_key(peer)
    }

    /// The peer authenticated on `conn`, if any (a driver logs it; the machine never needs it).
    pub fn peer_of(&self, conn: ConnId) -> Option<PeerId> {
        match self.conns.get(&conn)?.phase {
            Phase::Authenticated { peer } => Some(peer),
            _ => None,
        }
    }

    /// The alias bindings, for persisting them (in alias order).
    pub fn aliases(&self) -> impl Iterator<Item = (&str, &PeerId)> {
        self.aliases.iter().map(|(a, p)| (a.as_str(), p))
    }

    /// A new transport connection (its WebSocket upgrade on `/ws` succeeded).
    pub fn handle_connect(&mut self, now: Instant, conn: ConnId) {
        assert!(
            !self.conns.contains_key(&conn),
            "connection id {conn:?} reused while open"
        );
        if self.conns.len() >= self.config.limits.max_connections {
            self.send(
                conn,
                ServerMsg::error(ErrorCode::ServerFull, None, "too many connections"),
            );
            self.out.push_back(Output::Close {
                conn,
                code: close::TRY_AGAIN,
                reason: "server full".into(),
            });
            return;
        }
        let deadline = now + self.config.limits.auth_timeout;
        self.conns.insert(
            conn,
            Conn {
                phase: Phase::AwaitHello,
                deadline,
                tokens: f64::from(self.config.limits.burst),
                refilled: now,
                strikes: 0,
                rtt: None,
                ping: None,
            },
        );
        self.timers.insert((deadline, Timer::Auth(conn)));
    }

    /// The transport connection ended (either side closed it, or it broke). Idempotent.
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        self.forget(now, conn);
    }

    /// Whether `m` from `conn` answers or refuses an offer still waiting for its peer (see
    /// [`Limits::frames_per_second`]).
    fn owed(&self, conn: ConnId, m: &ClientMsg) -> bool {
        let Some(Phase::Authenticated { peer }) = self.conns.get(&conn).map(|c| &c.phase) else {
            return false;
        };
        let session = match m {
            ClientMsg::Answer { session, .. } | ClientMsg::Close { session, .. } => session,
            _ => return false,
        };
        self.sessions
            .get(session)
            .is_some_and(|s| s.answerer == *peer && !s.answered)
    }

    /// The frame rate every connection is held to, as `welcome` tells the client.
    fn rate(&self) -> crate::msg::Rate {
        crate::msg::Rate {
            frames_per_second: self.config.limits.frames_per_second,
            burst: self.config.limits.burst,
        }
    }

    /// A text frame arrived on `conn`. Frames on unknown connections are ignored.
    pub fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: &str) {
        let limits = &self.config.limits;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        // Rate first: within it a frame costs no parsing before it counts; over it, only the
        // exemption below is looked for, until the flood tolerance closes the connection.
        let elapsed = now.saturating_duration_since(c.refilled).as_secs_f64();
        c.refilled = now;
        c.tokens =
            (c.tokens + elapsed * f64::from(limits.frames_per_second)).min(f64::from(limits.burst));
        let over = c.tokens < 1.0;
        if over && frame.len() <= limits.max_frame_len {
            // Over the rate, the one exemption: answers (and refusals) of offers waiting for
            // this peer. There can be no more of them than the offers others sent, which
            // their own rates bound, so a hub answers a crowd as fast as it arrives.
            if let Ok(m) = ClientMsg::decode(frame) {
                if self.owed(conn, &m) {
                    self.handle_msg(now, conn, m);
                    return;
                }
            }
        }
        let limits = &self.config.limits;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if over {
            c.strikes += 1;
            let strikes = c.strikes;
            if strikes == 1 {
                self.send(
                    conn,
                    ServerMsg::error(ErrorCode::RateLimited, None, "slow down"),
                );
            } else if strikes > limits.flood_tolerance {
                self.fail(now, conn, ErrorCode::RateLimited, close::POLICY, "flood");
            }
            return;
        }
        c.tokens -= 1.0;
        c.strikes = 0;
        if frame.len() > limits.max_frame_len {
            let msg = format!("frame over {} bytes", limits.max_frame_len);
            self.fail(now, conn, ErrorCode::TooLarge, close::TOO_BIG, &msg);
            return;
        }
        match ClientMsg::decode(frame) {
            Ok(m) => self.handle_msg(now, conn, m),
            Err(e) => {
                let detail = match &e {
                    msg::DecodeError::BadMessage(d) => d.clone(),
                    _ => String::new(),
                };
                self.send(conn, ServerMsg::error(e.code(), None, detail));
            }
        }
    }

    /// Fires every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, timer)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.pop_first();
            match timer {
                Timer::Auth(conn) => {
                    let due = self.conns.get(&conn).is_some_and(|c| {
                        !matches!(c.phase, Phase::Authenticated { .. }) && c.deadline <= now
                    });
                    if due {
                        self.fail(
                            now,
                            conn,
                            ErrorCode::AuthTimeout,
                            close::POLICY,
                            "auth timeout",
                        );
                    }
                }
                Timer::Ping(conn) => self.ping(now, conn),
                Timer::Session(id) => {
                    if self
                        .sessions
                        .get(&id)
                        .is_some_and(|s| !s.answered && s.expires <= now)
                    {
                        self.close_session(id, "unanswered");
                    }
                }
                Timer::Rejoin(id) => {
                    let grace = self.config.limits.rejoin_grace;
                    let gone = self
                        .sessions
                        .get(&id)
                        .and_then(|s| s.away_since)
                        .is_some_and(|since| since + grace <= now);
                    if gone {
                        self.close_session(id, "peer left");
                    }
                }
                Timer::Nonces => self.prune_nonces(now),
                Timer::Query(query) => {
                    if self.queries.get(&query).is_some_and(|(at, _)| *at <= now) {
                        self.answer_query(now, query, Answer::TimedOut);
                    }
                }
            }
        }
    }

    /// The next thing for the driver to do, if any.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// When [`Server::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|(at, _)| *at)
    }

    /// The next thing for the driver to do with the cluster, if any (never without
    /// [`ServerConfig::cluster`]).
    pub fn poll_cluster(&mut self) -> Option<ClusterOutput> {
        self.cluster_out.pop_front()
    }

    /// Questions to the cluster still waiting for an answer.
    pub fn cluster_queries(&self) -> usize {
        self.queries.len()
    }

    /// The answer to a [`ClusterOutput::Resolve`]: `peer` (for an alias, whom it names) and
    /// whether it is online on another instance. Unknown or late queries are ignored.
    pub fn handle_resolved(
        &mut self,
        now: Instant,
        query: QueryId,
        peer: Option<PeerId>,
        online: bool,
    ) {
        self.answer_query(now, query, Answer::Resolved(peer, online));
    }

    /// The answer to a [`ClusterOutput::ClaimAlias`]: `granted` when the alias is now the
    /// peer's, cluster-wide; `None` when the cluster could not be asked.
    pub fn handle_claimed(&mut self, now: Instant, query: QueryId, granted: Option<bool>) {
        let answer = match granted {
            Some(granted) => Answer::Claimed(granted),
            None => Answer::TimedOut,
        };
        self.answer_query(now, query, answer);
    }

    /// A frame another instance forwarded for `to`, a peer of this one. It is network input:
    /// it is delivered only if it fits this instance's half of a session with a remote peer
    /// (an offer opens that half). Returns whether it was delivered.
    pub fn handle_forwarded(&mut self, now: Instant, to: PeerId, frame: &str) -> bool {
        if frame.len() > self.config.limits.max_frame_len.saturating_mul(2) {
            return false;
        }
        let Ok(m) = ServerMsg::decode(frame) else {
            return false;
        };
        if !self.peers.contains_key(&to) {
            // Gone or moved on since the sender looked: an offer's sender learns at once.
            if let ServerMsg::Offer { session, from, .. } = m {
                self.refuse_remote_offer(session, from, "unreachable");
            }
            return false;
        }
        let session = match &m {
            ServerMsg::Offer { session, from, .. } => {
                let (session, from) = (*session, *from);
                if from == to || self.peers.contains_key(&from) {
                    return false;
                }
                if self.sessions.contains_key(&session) {
                    return false;
                }
                let max = self.config.limits.max_pending_offers;
                if self.pending_to.get(&to).copied().unwrap_or(0) >= max {
                    self.refuse_remote_offer(session, from, "too many unanswered offers");
                    return false;
                }
                if let Some((_, reason)) = self.no_room(from, to) {
                    self.refuse_remote_offer(session, from, reason);
                    return false;
                }
                let expires = now + self.config.limits.offer_timeout;
                self.insert_session(
                    session,
                    Session {
                        offerer: from,
                        answerer: to,
                        answered: false,
                        expires,
                        remote: Some(from),
                        unconfirmed: None,
                        away_since: None,
                    },
                );
                *self.pending_to.entry(to).or_default() += 1;
                self.send_peer(to, m);
                return true;
            }
            ServerMsg::Answer { session, .. }
            | ServerMsg::Candidate { session, .. }
            | ServerMsg::Nat { session, .. }
            | ServerMsg::Punch { session, .. }
            | ServerMsg::Relay { session, .. }
            | ServerMsg::SessionClosed { session, .. } => *session,
            _ => return false,
        };
        // The session must pair `to` with the remote peer this frame speaks for.
        let Some(s) = self.sessions.get_mut(&session) else {
            return false;
        };
        let Some(other) = s.other(to) else {
            return false;
        };
        if s.remote != Some(other) {
            return false;
        }
        let mut confirm = None;
        match &m {
            ServerMsg::Answer { from, .. } => {
                if s.answered || s.offerer != to || *from != other {
                    return false;
                }
                s.answered = true;
                // Answered, the session lives as long as its peers (see `Server`).
                self.timers.remove(&(s.expires, Timer::Session(session)));
                self.unpend(to, other);
            }
            ServerMsg::Relay { .. } if !s.answered => return false,
            ServerMsg::SessionClosed { .. } => {
                confirm = self.remove_session(session).and_then(|s| s.unconfirmed);
            }
            _ => {}
        }
        // The other side spoke: the offer arrived, whatever the cluster says later.
        if confirm.is_none() {
            confirm = self
                .sessions
                .get_mut(&session)
                .and_then(|s| s.unconfirmed.take());
        }
        if let Some((conn, id)) = confirm {
            self.send(conn, ServerMsg::OfferSent { id, session });
        }
        self.send_peer(to, m);
        true
    }

    /// A [`ClusterOutput::Forward`] to `peer` found no instance holding it: every session
    /// with it ends, and the local peer learns why at once.
    pub fn handle_unreachable(&mut self, _now: Instant, peer: PeerId) {
        let ids: Vec<SessionId> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.remote == Some(peer))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(s) = self.remove_session(id) else {
                continue;
            };
            if let Some((conn, request)) = s.unconfirmed {
                self.send(
                    conn,
                    ServerMsg::error(ErrorCode::UnknownPeer, Some(request), "not online"),
                );
                continue;
            }
            let local = if s.offerer == peer {
                s.answerer
            } else {
                s.offerer
            };
            self.send_peer(
                local,
                ServerMsg::SessionClosed {
                    session: id,
                    reason: "unreachable".into(),
                    code: None,
                },
            );
        }
    }

    /// `peer` authenticated on another instance since: its connection here is the older one
    /// and is closed, as a reconnect on the same instance would close it.
    pub fn handle_evicted(&mut self, now: Instant, peer: PeerId) {
        let Some(&conn) = self.peers.get(&peer) else {
            return;
        };
        self.forget(now, conn);
        self.out.push_back(Output::Close {
            conn,
            code: close::NORMAL,
            reason: "replaced by a newer connection on another server".into(),
        });
    }

    /// The `turn:` URLs handed out from now on (in a cluster, the least-loaded instance's).
    /// Ignored without a relay.
    pub fn set_relay_urls(&mut self, urls: Vec<String>) {
        if let Some(relay) = &mut self.config.relay {
            relay.urls = urls;
        }
    }

    /// The `turn:` URLs handed out now, if a relay is configured.
    pub fn relay_urls(&self) -> Option<&[String]> {
        self.config.relay.as_ref().map(|r| r.urls.as_slice())
    }

    /// Tells a remote offerer that its offer went nowhere.
    fn refuse_remote_offer(&mut self, session: SessionId, from: PeerId, reason: &str) {
        self.cluster_out.push_back(ClusterOutput::Forward {
            peer: from,
            frame: ServerMsg::SessionClosed {
                session,
                reason: reason.into(),
                code: None,
            }
            .encode(),
        });
    }

    /// Registers a query and emits its output, or hands the query back when too many wait.
    fn ask(
        &mut self,
        now: Instant,
        make: impl FnOnce(QueryId) -> (Query, ClusterOutput),
    ) -> Result<(), Query> {
        let id = QueryId(self.next_query);
        self.next_query += 1;
        let (query, out) = make(id);
        if self.queries.len() >= self.config.limits.max_cluster_queries {
            return Err(query);
        }
        let deadline = now + self.config.limits.cluster_query_timeout;
        self.queries.insert(id, (deadline, query));
        self.timers.insert((deadline, Timer::Query(id)));
        self.cluster_out.push_back(out);
        Ok(())
    }

    /// Refuses a request that found the cluster queue full (a local limit, typed and said).
    fn refuse_query(&mut self, query: Query) {
        let detail = "too many questions to the cluster waiting; try again";
        match query {
            Query::Lookup { conn, id }
            | Query::Offer { conn, id, .. }
            | Query::Register { conn, id, .. } => self.send(
                conn,
                ServerMsg::error(ErrorCode::ServerFull, Some(id), detail),
            ),
            Query::Welcome { conn, peer, .. } => {
                let rate = Some(self.rate());
                self.send(
                    conn,
                    ServerMsg::Welcome {
                        peer,
                        alias: None,
                        rate,
                    },
                );
                self.send(conn, ServerMsg::error(ErrorCode::ServerFull, None, detail));
            }
        }
    }

    fn answer_query(&mut self, _now: Instant, query: QueryId, answer: Answer) {
        let Some((deadline, q)) = self.queries.remove(&query) else {
            return;
        };
        self.timers.remove(&(deadline, Timer::Query(query)));
        let unreachable = "the cluster did not answer";
        match q {
            Query::Lookup { conn, id } => {
                if !self.conns.contains_key(&conn) {
                    return;
                }
                let (peer, online) = match answer {
                    Answer::Resolved(peer, online) => (peer, online),
                    _ => (None, false),
                };
                self.send(conn, ServerMsg::LookupResult { id, peer, online });
            }
            Query::Offer {
                conn,
                me,
                id,
                session,
            } => {
                let Some(s) = self.sessions.get_mut(&session) else {
                    return;
                };
                if let Answer::Resolved(_, true) = answer {
                    if let Some((conn, id)) = s.unconfirmed.take() {
                        self.send(conn, ServerMsg::OfferSent { id, session });
                    }
                } else if s.unconfirmed.is_some() {
                    // No instance took it (and the other side never spoke): it went nowhere.
                    self.discard_session(session);
                    if self.peer_of(conn) == Some(me) {
                        self.send(
                            conn,
                            ServerMsg::error(ErrorCode::UnknownPeer, Some(id), "not online"),
                        );
                    }
                }
            }
            Query::Welcome { conn, peer, alias } => {
                if self.peer_of(conn) != Some(peer) {
                    return;
                }
                let rate = Some(self.rate());
                let (bound, error) = match answer {
                    Answer::Claimed(true) => (Some(self.record_alias(peer, alias)), None),
                    Answer::Claimed(false) => (None, Some((ErrorCode::AliasTaken, alias))),
                    _ => (None, Some((ErrorCode::ServerFull, alias))),
                };
                self.send(
                    conn,
                    ServerMsg::Welcome {
                        peer,
                        alias: bound,
                        rate,
                    },
                );
                if let Some((code, alias)) = error {
                    let detail = if code == ErrorCode::ServerFull {
                        format!("alias {alias:?}: {unreachable}")
                    } else {
                        format!("alias {alias:?}")
                    };
                    self.send(conn, ServerMsg::error(code, None, detail));
                }
            }
            Query::Register {
                conn,
                peer,
                id,
                alias,
            } => {
                if self.peer_of(conn) != Some(peer) {
                    return;
                }
                let m = match answer {
                    Answer::Claimed(true) => ServerMsg::Registered {
                        id,
                        alias: self.record_alias(peer, alias),
                    },
                    Answer::Claimed(false) => ServerMsg::error(
                        ErrorCode::AliasTaken,
                        Some(id),
                        format!("alias {alias:?}"),
                    ),
                    _ => ServerMsg::error(
                        ErrorCode::ServerFull,
                        Some(id),
                        format!("alias {alias:?}: {unreachable}"),
                    ),
                };
                self.send(conn, m);
            }
        }
    }

    /// Forgets a session without telling anyone (its offer never left, or went nowhere).
    fn discard_session(&mut self, id: SessionId) {
        self.remove_session(id);
    }

    /// Records a new (offered) session: its peers' indexes and the offer's deadline.
    fn insert_session(&mut self, id: SessionId, s: Session) {
        for p in [s.offerer, s.answerer] {
            self.of_peer.entry(p).or_default().insert(id);
        }
        self.timers.insert((s.expires, Timer::Session(id)));
        self.sessions.insert(id, s);
    }

    /// Forgets a session and everything that names it: its deadline, its peers' indexes,
    /// and (unanswered) the pending offer it counted as.
    fn remove_session(&mut self, id: SessionId) -> Option<Session> {
        let s = self.sessions.remove(&id)?;
        self.timers.remove(&(s.expires, Timer::Session(id)));
        if !s.answered {
            self.unpend(s.offerer, s.answerer);
        }
        for p in [s.offerer, s.answerer] {
            if let Some(ids) = self.of_peer.get_mut(&p) {
                ids.remove(&id);
                if ids.is_empty() {
                    self.of_peer.remove(&p);
                }
            }
        }
        Some(s)
    }

    /// Why a new session between `a` and `b` does not fit, if it does not: the server's
    /// sessions in all, or either peer's ([`Limits::max_sessions`],
    /// [`Limits::max_sessions_per_peer`]).
    fn no_room(&self, a: PeerId, b: PeerId) -> Option<(ErrorCode, &'static str)> {
        let limits = &self.config.limits;
        if self.sessions.len() >= limits.max_sessions {
            return Some((ErrorCode::ServerFull, "too many sessions on the server"));
        }
        let held = |p: &PeerId| self.of_peer.get(p).map_or(0, BTreeSet::len);
        if held(&a) >= limits.max_sessions_per_peer || held(&b) >= limits.max_sessions_per_peer {
            return Some((ErrorCode::TooManySessions, "too many sessions"));
        }
        None
    }

    /// The sessions `peer` takes part in.
    fn sessions_of(&self, peer: PeerId) -> Vec<SessionId> {
        self.of_peer
            .get(&peer)
            .map(|ids| ids.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Remembers an alias the cluster granted.
    fn record_alias(&mut self, peer: PeerId, alias: String) -> String {
        if self.aliases.insert(alias.clone(), peer).is_none() {
            *self.alias_count.entry(peer).or_default() += 1;
        }
        alias
    }

    fn handle_msg(&mut self, now: Instant, conn: ConnId, m: ClientMsg) {
        let phase = &self.conns[&conn].phase;
        match (phase, m) {
            (_, ClientMsg::Ping { id }) => self.send(conn, ServerMsg::Pong { id }),
            (Phase::AwaitHello, ClientMsg::Hello { version, nonce }) => {
                self.hello(now, conn, version, nonce)
            }
            (
                Phase::AwaitAuth { .. },
                ClientMsg::Auth {
                    peer,
                    challenge,
                    signature,
                    alias,
                },
            ) => self.auth(now, conn, peer, challenge, signature, alias),
            (Phase::AwaitHello, ClientMsg::Auth { .. }) => self.send(
                conn,
                ServerMsg::error(ErrorCode::UnexpectedMessage, None, "auth before hello"),
            ),
            (_, ClientMsg::Hello { .. } | ClientMsg::Auth { .. }) => self.send(
                conn,
                ServerMsg::error(ErrorCode::UnexpectedMessage, None, "handshake already done"),
            ),
            (Phase::Authenticated { peer }, m) => {
                let peer = *peer;
                self.authenticated(now, conn, peer, m)
            }
            (_, m) => {
                let id = request_id(&m);
                self.send(
                    conn,
                    ServerMsg::error(ErrorCode::NotAuthenticated, id, "authenticate first"),
                )
            }
        }
    }

    fn hello(&mut self, now: Instant, conn: ConnId, version: u32, nonce: Nonce) {
        if version < PROTOCOL_VERSION {
            let msg = format!("this server speaks version {PROTOCOL_VERSION}");
            self.fail(
                now,
                conn,
                ErrorCode::VersionUnsupported,
                close::PROTOCOL,
                &msg,
            );
            return;
        }
        if !self.nonces.insert(nonce) {
            self.fail(
                now,
                conn,
                ErrorCode::Replayed,
                close::POLICY,
                "client nonce reused",
            );
            return;
        }
        if self.nonce_log.is_empty() {
            self.timers
                .insert((now + self.config.limits.auth_timeout, Timer::Nonces));
        }
        self.nonce_log.push_back((now, nonce));
        let mut server_nonce = [0u8; 32];
        self.rng.fill_bytes(&mut server_nonce);
        let server_nonce = Nonce(server_nonce);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::AwaitAuth {
                client_nonce: nonce,
                server_nonce,
                sent_at: now,
            };
        }
        self.send(
            conn,
            ServerMsg::Challenge {
                version: PROTOCOL_VERSION,
                nonce: server_nonce,
                server: self.server_id,
                realm: self.config.realm.clone(),
            },
        );
    }

    fn auth(
        &mut self,
        now: Instant,
        conn: ConnId,
        peer: PeerId,
        challenge: Nonce,
        signature: msg::Sig,
        alias: Option<String>,
    ) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Phase::AwaitAuth {
            client_nonce,
            server_nonce,
            sent_at,
        } = c.phase
        else {
            return;
        };
        // One attempt per challenge: from here on the challenge is spent.
        c.phase = Phase::AwaitHello;
        if challenge != server_nonce {
            self.fail(
                now,
                conn,
                ErrorCode::Replayed,
                close::POLICY,
                "not this connection's challenge",
            );
            return;
        }
        let transcript = msg::auth_transcript(
            &self.config.realm,
            &self.server_id,
            &client_nonce,
            &server_nonce,
            &peer,
            alias.as_deref(),
        );
        if !peer.verify(&transcript, &signature.0) {
            self.fail(
                now,
                conn,
                ErrorCode::BadSignature,
                close::POLICY,
                "signature does not verify",
            );
            return;
        }
        let replacing = self.peers.get(&peer).copied();
        if replacing.is_none() && self.peers.len() >= self.config.limits.max_peers {
            self.fail(
                now,
                conn,
                ErrorCode::ServerFull,
                close::TRY_AGAIN,
                "too many peers",
            );
            return;
        }
        if let Some(old) = replacing {
            // The newer connection wins: a peer that changed networks reconnects before the
            // old connection times out.
            self.forget(now, old);
            self.out.push_back(Output::Close {
                conn: old,
                code: close::NORMAL,
                reason: "replaced by a newer connection".into(),
            });
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.phase = Phase::Authenticated { peer };
            c.rtt = Some(now.saturating_duration_since(sent_at));
        }
        self.peers.insert(peer, conn);
        // Back within the grace: its sessions go on.
        for id in self.sessions_of(peer) {
            if let Some(s) = self.sessions.get_mut(&id) {
                s.away_since = None;
            }
        }
        if self.config.cluster {
            self.cluster_out
                .push_back(ClusterOutput::Presence { peer, online: true });
        }
        self.timers
            .insert((now + self.config.limits.ping_interval, Timer::Ping(conn)));
        let bound = match alias {
            Some(a) => match self.bind_alias(peer, &a) {
                Ok(Bound::Held(a)) => Some(a),
                Ok(Bound::Claim(alias)) => {
                    self.ask(now, |query| {
                        (
                            Query::Welcome {
                                conn,
                                peer,
                                alias: alias.clone(),
                            },
                            ClusterOutput::ClaimAlias { query, peer, alias },
                        )
                    })
                    .unwrap_or_else(|q| self.refuse_query(q));
                    return;
                }
                Err(code) => {
                    let rate = Some(self.rate());
                    self.send(
                        conn,
                        ServerMsg::Welcome {
                            peer,
                            alias: None,
                            rate,
                        },
                    );
                    self.send(conn, ServerMsg::error(code, None, format!("alias {a:?}")));
                    return;
                }
            },
            None => None,
        };
        let rate = Some(self.rate());
        self.send(
            conn,
            ServerMsg::Welcome {
                peer,
                alias: bound,
                rate,
            },
        );
    }

    fn authenticated(&mut self, now: Instant, conn: ConnId, me: PeerId, m: ClientMsg) {
        match m {
            ClientMsg::Register { id, alias } => match self.bind_alias(me, &alias) {
                Ok(Bound::Held(alias)) => self.send(conn, ServerMsg::Registered { id, alias }),
                Ok(Bound::Claim(alias)) => self
                    .ask(now, |query| {
                        (
                            Query::Register {
                                conn,
                                peer: me,
                                id,
                                alias: alias.clone(),
                            },
                            ClusterOutput::ClaimAlias {
                                query,
                                peer: me,
                                alias,
                            },
                        )
                    })
                    .unwrap_or_else(|q| self.refuse_query(q)),
                Err(code) => self.send(
                    conn,
                    ServerMsg::error(code, Some(id), format!("alias {alias:?}")),
                ),
            },
            ClientMsg::Lookup { id, target } => {
                let by_key = target.parse::<PeerId>().ok();
                let peer =
                    by_key.or_else(|| self.aliases.get(&target.to_ascii_lowercase()).copied());
                let online = peer.is_some_and(|p| self.peers.contains_key(&p));
                if online || !self.config.cluster {
                    self.send(conn, ServerMsg::LookupResult { id, peer, online });
                    return;
                }
                // Not here: perhaps on another instance.
                let target = match by_key {
                    Some(p) => Target::Peer(p),
                    None => Target::Alias(target.to_ascii_lowercase()),
                };
                self.ask(now, |query| {
                    (
                        Query::Lookup { conn, id },
                        ClusterOutput::Resolve { query, target },
                    )
                })
                .unwrap_or_else(|q| self.refuse_query(q));
            }
            ClientMsg::Offer {
                id,
                to,
                description,
            } => self.offer(now, conn, me, id, to, description),
            ClientMsg::Answer {
                session,
                description,
            } => self.answer(conn, me, session, description),
            ClientMsg::Candidate {
                session,
                candidate,
                signature,
            } => {
                let msg = ServerMsg::Candidate {
                    session,
                    candidate,
                    signature,
                };
                self.forward_in_session(conn, me, session, msg);
            }
            ClientMsg::Nat {
                session,
                nat,
                signature,
            } => {
                let msg = ServerMsg::Nat {
                    session,
                    nat,
                    signature,
                };
                self.forward_in_session(conn, me, session, msg);
            }
            ClientMsg::Close {
                session,
                code,
                reason,
            } => self.peer_close(conn, me, session, code, reason),
            ClientMsg::RelayRequest { id } => self.relay(now, conn, me, id),
            ClientMsg::Relay { session, data } => self.relay_data(conn, me, session, data),
            ClientMsg::Pong { id } => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    if let Some((sent_id, sent_at)) = c.ping {
                        if sent_id == id {
                            let sample = now.saturating_duration_since(sent_at);
                            // RFC 6298 §2.3 smoothing, alpha = 1/8.
                            c.rtt = Some(match c.rtt {
                                Some(r) => (r * 7 + sample) / 8,
                                None => sample,
                            });
                            c.ping = None;
                        }
                    }
                }
            }
            ClientMsg::Hello { .. } | ClientMsg::Auth { .. } | ClientMsg::Ping { .. } => {
                debug_assert!(false, "handled in handle_msg");
            }
        }
    }

    fn offer(
        &mut self,
        now: Instant,
        conn: ConnId,
        me: PeerId,
        id: RequestId,
        to: PeerId,
        description: Description,
    ) {
        // Not here: perhaps on another instance, which the cluster finds as it delivers.
        let remote =
            (self.config.cluster && to != me && !self.peers.contains_key(&to)).then_some(to);
        self.open_offer(now, conn, me, id, to, remote, description);
    }

    /// Opens the session of an offer whose answerer is here, or (`remote`) on another instance.
    #[allow(clippy::too_many_arguments)]
    fn open_offer(
        &mut self,
        now: Instant,
        conn: ConnId,
        me: PeerId,
        id: RequestId,
        to: PeerId,
        remote: Option<PeerId>,
        description: Description,
    ) {
        let max = self.config.limits.max_pending_offers;
        if to == me || (remote.is_none() && !self.peers.contains_key(&to)) {
            self.send(
                conn,
                ServerMsg::error(ErrorCode::UnknownPeer, Some(id), "not online"),
            );
            return;
        }
        if self.pending_from.get(&me).copied().unwrap_or(0) >= max
            || self.pending_to.get(&to).copied().unwrap_or(0) >= max
        {
            self.send(
                conn,
                ServerMsg::error(
                    ErrorCode::TooManyPending,
                    Some(id),
                    "too many unanswered offers",
                ),
            );
            return;
        }
        if let Some((code, reason)) = self.no_room(me, to) {
            self.send(conn, ServerMsg::error(code, Some(id), reason));
            return;
        }
        let mut raw = [0u8; 16];
        self.rng.fill_bytes(&mut raw);
        let session = SessionId(raw);
        let expires = now + self.config.limits.offer_timeout;
        self.insert_session(
            session,
            Session {
                offerer: me,
                answerer: to,
                answered: false,
                expires,
                remote,
                unconfirmed: remote.map(|_| (conn, id)),
                away_since: None,
            },
        );
        *self.pending_from.entry(me).or_default() += 1;
        *self.pending_to.entry(to).or_default() += 1;
        if let Some(peer) = remote {
            let frame = ServerMsg::Offer {
                session,
                from: me,
                description,
            }
            .encode();
            let asked = self.ask(now, |query| {
                (
                    Query::Offer {
                        conn,
                        me,
                        id,
                        session,
                    },
                    ClusterOutput::Offer { query, peer, frame },
                )
            });
            if let Err(q) = asked {
                self.discard_session(session);
                self.refuse_query(q);
            }
            return;
        }
        self.send(conn, ServerMsg::OfferSent { id, session });
        self.send_to(
            to,
            remote,
            ServerMsg::Offer {
                session,
                from: me,
                description,
            },
        );
    }

    fn answer(&mut self, conn: ConnId, me: PeerId, session: SessionId, description: Description) {
        let (offerer, remote) = match self.sessions.get_mut(&session) {
            Some(s) if s.answerer == me && !s.answered => {
                s.answered = true;
                // The offer's deadline goes; the session now lives as long as its peers
                // (see `Server`).
                self.timers.remove(&(s.expires, Timer::Session(session)));
                (s.offerer, s.remote)
            }
            _ => {
                self.send(
                    conn,
                    ServerMsg::error(ErrorCode::UnknownSession, None, session.to_string()),
                );
                return;
            }
        };
        self.unpend(offerer, me);
        self.send_to(
            offerer,
            remote,
            ServerMsg::Answer {
                session,
                from: me,
                description,
            },
        );
        self.punch(session, offerer, me, remote);
    }

    /// Punch sync: both peers start at T = now + max(rtt_a, rtt_b)/2 + margin on the server's
    /// clock; each is told the delay after *its* receipt, T − (now + rtt_x/2).
    ///
    /// A remote peer's RTT is not known here: it counts as [`Limits::default_rtt`].
    fn punch(&mut self, session: SessionId, a: PeerId, b: PeerId, remote: Option<PeerId>) {
        let default = self.config.limits.default_rtt;
        let rtt = |p: &PeerId| {
            self.peers
                .get(p)
                .and_then(|c| self.conns.get(c))
                .and_then(|c| c.rtt)
                .unwrap_or(default)
        };
        let (ra, rb) = (rtt(&a), rtt(&b));
        let at = ra.max(rb) / 2 + self.config.limits.punch_margin;
        let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
        for (me, mine, theirs) in [(a, ra, rb), (b, rb, ra)] {
            self.send_to(
                me,
                remote,
                ServerMsg::Punch {
                    session,
                    delay_ms: ms(at.saturating_sub(mine / 2)),
                    at_ms: ms(at),
                    rtt_ms: ms(mine),
                    peer_rtt_ms: ms(theirs),
                },
            );
        }
    }

    /// Relay over signaling: forwards a datagram between the two peers of an answered session.
    /// Only peers of the session may use it, each
    /// datagram is at most [`Limits::max_relay_datagram`] bytes, and it counts against the
    /// connection's frame rate like any frame.
    fn relay_data(&mut self, conn: ConnId, me: PeerId, session: SessionId, data: String) {
        use base64::Engine as _;
        let max = self.config.limits.max_relay_datagram;
        let (other, remote) = match self.sessions.get(&session) {
            Some(s) if s.answered && (s.offerer == me || s.answerer == me) => {
                (s.other(me).unwrap_or(me), s.remote)
            }
            _ => {
                self.send(
                    conn,
                    ServerMsg::error(ErrorCode::UnknownSession, None, session.to_string()),
                );
                return;
            }
        };
        let valid = base64::engine::general_purpose::STANDARD
            .decode(data.as_bytes())
            .is_ok_and(|bytes| bytes.len() <= max);
        if !valid {
            self.send(
                conn,
                ServerMsg::error(
                    ErrorCode::BadMessage,
                    None,
                    format!("relay data must be base64 of at most {max} bytes"),
                ),
            );
            return;
        }
        self.send_to(other, remote, ServerMsg::Relay { session, data });
    }

    fn relay(&mut self, now: Instant, conn: ConnId, me: PeerId, id: RequestId) {
        let Some(relay) = &self.config.relay else {
            self.send(
                conn,
                ServerMsg::error(ErrorCode::RelayUnavailable, Some(id), "no relay configured"),
            );
            return;
        };
        let unix_now = relay.epoch.1 + now.saturating_duration_since(relay.epoch.0).as_secs();
        let username = format!("{}:{}", unix_now + relay.ttl.as_secs(), me);
        // HMAC accepts keys of any length; the error branch cannot happen.
        let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(&relay.secret) else {
            return;
        };
        mac.update(username.as_bytes());
        use base64::Engine as _;
        let password =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let msg = ServerMsg::RelayCredentials {
            id,
            username,
            password,
            ttl_s: u32::try_from(relay.ttl.as_secs()).unwrap_or(u32::MAX),
            urls: relay.urls.clone(),
        };
        self.send(conn, msg);
    }

    fn ping(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let id = self.next_ping_id;
        self.next_ping_id = self.next_ping_id.wrapping_add(1);
        c.ping = Some((id, now));
        self.timers
            .insert((now + self.config.limits.ping_interval, Timer::Ping(conn)));
        self.send(conn, ServerMsg::Ping { id });
    }

    /// Binds `alias` to `peer` here, or (in a cluster) says it must be claimed first.
    fn bind_alias(&mut self, peer: PeerId, alias: &str) -> Result<Bound, ErrorCode> {
        let valid = (1..=64).contains(&alias.len())
            && alias
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b));
        if !valid {
            return Err(ErrorCode::BadAlias);
        }
        let alias = alias.to_ascii_lowercase();
        match self.aliases.get(&alias) {
            Some(owner) if *owner == peer => return Ok(Bound::Held(alias)),
            Some(_) => return Err(ErrorCode::AliasTaken),
            None => {}
        }
        let count = self.alias_count.get(&peer).copied().unwrap_or(0);
        if count >= self.config.limits.max_aliases_per_peer {
            return Err(ErrorCode::TooManyAliases);
        }
        if self.aliases.len() >= self.config.limits.max_aliases {
            return Err(ErrorCode::ServerFull);
        }
        if self.config.cluster {
            return Ok(Bound::Claim(alias));
        }
        self.aliases.insert(alias.clone(), peer);
        self.alias_count.insert(peer, count + 1);
        Ok(Bound::Held(alias))
    }

    fn unpend(&mut self, offerer: PeerId, answerer: PeerId) {
        for (map, p) in [
            (&mut self.pending_from, offerer),
            (&mut self.pending_to, answerer),
        ] {
            if let Some(n) = map.get_mut(&p) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    map.remove(&p);
                }
            }
        }
    }

    /// A peer of `session` ends it: the other peer learns its code and reason, and the session
    /// is forgotten (an unanswered one no longer counts against either peer's pending offers).
    fn peer_close(
        &mut self,
        conn: ConnId,
        me: PeerId,
        session: SessionId,
        code: u32,
        reason: String,
    ) {
        let (other, remote) = match self.sessions.get(&session) {
            Some(s) if s.offerer == me => (s.answerer, s.remote),
            Some(s) if s.answerer == me => (s.offerer, s.remote),
            _ => {
                self.send(
                    conn,
                    ServerMsg::error(ErrorCode::UnknownSession, None, session.to_string()),
                );
                return;
            }
        };
        if reason.len() > MAX_CLOSE_REASON {
            self.send(
                conn,
                ServerMsg::error(
                    ErrorCode::BadMessage,
                    None,
                    format!("a close reason is at most {MAX_CLOSE_REASON} bytes"),
                ),
            );
            return;
        }
        self.remove_session(session);
        self.send_to(
            other,
            remote,
            ServerMsg::SessionClosed {
                session,
                reason,
                code: Some(code),
            },
        );
    }

    fn close_session(&mut self, id: SessionId, reason: &str) {
        let Some(s) = self.remove_session(id) else {
            return;
        };
        for p in [s.offerer, s.answerer] {
            self.send_to(
                p,
                s.remote,
                ServerMsg::SessionClosed {
                    session: id,
                    reason: reason.into(),
                    code: None,
                },
            );
        }
    }

    fn prune_nonces(&mut self, now: Instant) {
        let ttl = self.config.limits.auth_timeout;
        while let Some(&(at, nonce)) = self.nonce_log.front() {
            if at + ttl > now {
                self.timers.insert((at + ttl, Timer::Nonces));
                break;
            }
            self.nonce_log.pop_front();
            self.nonces.remove(&nonce);
        }
    }

    /// Sends an error, closes, and forgets the connection.
    fn fail(&mut self, now: Instant, conn: ConnId, code: ErrorCode, close_code: u16, reason: &str) {
        self.send(conn, ServerMsg::error(code, None, reason));
        self.forget(now, conn);
        self.out.push_back(Output::Close {
            conn,
            code: close_code,
            reason: code.name().into(),
        });
    }

    fn forget(&mut self, now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Phase::Authenticated { peer } = c.phase {
            if self.peers.get(&peer) == Some(&conn) {
                self.peers.remove(&peer);
                if self.config.cluster {
                    self.cluster_out.push_back(ClusterOutput::Presence {
                        peer,
                        online: false,
                    });
                }
                let ids = self.sessions_of(peer);
                let grace = self.config.limits.rejoin_grace;
                for id in ids {
                    // An answered session waits a little for the peer to come back (its
                    // connection may have been cut by the same network change its candidates
                    // are about); what is sent to it meanwhile is dropped, and the peers send
                    // their candidates again when it is back. An offer closes at once.
                    match self.sessions.get_mut(&id) {
                        Some(s) if s.answered && !grace.is_zero() => {
                            s.away_since = Some(now);
                            self.timers.insert((now + grace, Timer::Rejoin(id)));
                        }
                        _ => self.close_session(id, "peer left"),
                    }
                }
            }
        }
        // Timers naming this connection are left to fire and find it gone.
    }

    fn send(&mut self, conn: ConnId, m: ServerMsg) {
        self.out.push_back(Output::Send {
            conn,
            frame: m.encode(),
        });
    }

    /// Forwards `m` about `session` from `me` (on `conn`) to the session's other peer; anyone
    /// not in the session gets `unknown_session`.
    fn forward_in_session(&mut self, conn: ConnId, me: PeerId, session: SessionId, m: ServerMsg) {
        match self.sessions.get(&session) {
            Some(s) if s.offerer == me || s.answerer == me => {
                // The other peer may be on another instance of a cluster.
                let (other, remote) = (s.other(me).unwrap_or(me), s.remote);
                self.send_to(other, remote, m);
            }
            _ => self.send(
                conn,
                ServerMsg::error(ErrorCode::UnknownSession, None, session.to_string()),
            ),
        }
    }

    fn send_peer(&mut self, peer: PeerId, m: ServerMsg) {
        if let Some(&conn) = self.peers.get(&peer) {
            self.send(conn, m);
        }
    }

    /// Sends to a participant of a session: over the cluster when it is the session's remote
    /// one, on its connection otherwise.
    fn send_to(&mut self, peer: PeerId, remote: Option<PeerId>, m: ServerMsg) {
        if remote == Some(peer) {
            self.cluster_out.push_back(ClusterOutput::Forward {
                peer,
                frame: m.encode(),
            });
        } else {
            self.send_peer(peer, m);
        }
    }
}

/// What [`Server::bind_alias`] found.
enum Bound {
    /// The peer holds the alias.
    Held(String),
    /// Free here; the cluster must grant it.
    Claim(String),
}

/// How a query ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    /// Resolved: the peer (if any) and whether it is online elsewhere.
    Resolved(Option<PeerId>, bool),
    /// Claimed or refused.
    Claimed(bool),
    /// No answer in time (or the cluster is out of reach).
    TimedOut,
}

fn request_id(m: &ClientMsg) -> Option<RequestId> {
    match m {
        ClientMsg::Register { id, .. }
        | ClientMsg::Lookup { id, .. }
        | ClientMsg::Offer { id, .. }
        | ClientMsg::RelayRequest { id } => Some(*id),
        _ => None,
    }
}
