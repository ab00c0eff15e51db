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
    /// Time an answered session stays open for trickled candidates (default 120 s).
    pub session_lifetime: Duration,
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
            session_lifetime: Duration::from_secs(120),
            max_relay_datagram: 1_400,
            max_aliases_per_peer: 4,
            max_aliases: 100_000,
            ping_interval: Duration::from_secs(15),
            punch_margin: Duration::from_millis(50),
            default_rtt: Duration::from_millis(200),
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
    expires: Instant,
}

/// Why a timer is set; fired entries are checked against current state (stale ones are ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    /// The connection must be authenticated by now.
    Auth(ConnId),
    /// Send the next RTT ping.
    Ping(ConnId),
    /// The session's offer or lifetime runs out.
    Session(SessionId),
    /// Forget client nonces older than the auth timeout.
    Nonces,
}

/// The signaling server machine. See the [module docs](self).
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
    pending_to: BTreeMap<PeerId, usize>,
    pending_from: BTreeMap<PeerId, usize>,
    /// Client nonces seen within the auth timeout, oldest first, and as a set.
    nonce_log: VecDeque<(Instant, Nonce)>,
    nonces: BTreeSet<Nonce>,
    timers: BTreeSet<(Instant, Timer)>,
    out: VecDeque<Output>,
    next_ping_id: u32,
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
            pending_to: BTreeMap::new(),
            pending_from: BTreeMap::new(),
            nonce_log: VecDeque::new(),
            nonces: BTreeSet::new(),
            timers: BTreeSet::new(),
            out: VecDeque::new(),
            next_ping_id: 1,
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
                    if self.sessions.get(&id).is_some_and(|s| s.expires <= now) {
                        let reason = if self.sessions[&id].answered {
                            "expired"
                        } else {
                            "unanswered"
                        };
                        self.close_session(id, reason);
                    }
                }
                Timer::Nonces => self.prune_nonces(now),
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
        self.timers
            .insert((now + self.config.limits.ping_interval, Timer::Ping(conn)));
        let bound = match alias {
            Some(a) => match self.bind_alias(peer, &a) {
                Ok(a) => Some(a),
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
                Ok(alias) => self.send(conn, ServerMsg::Registered { id, alias }),
                Err(code) => self.send(
                    conn,
                    ServerMsg::error(code, Some(id), format!("alias {alias:?}")),
                ),
            },
            ClientMsg::Lookup { id, target } => {
                let peer = target
                    .parse::<PeerId>()
                    .ok()
                    .or_else(|| self.aliases.get(&target.to_ascii_lowercase()).copied());
                let online = peer.is_some_and(|p| self.peers.contains_key(&p));
                self.send(conn, ServerMsg::LookupResult { id, peer, online });
            }
            ClientMsg::Offer {
                id,
                to,
                description,
            } => self.offer(now, conn, me, id, to, description),
            ClientMsg::Answer {
                session,
                description,
            } => self.answer(now, conn, me, session, description),
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
            ClientMsg::Relay { session, data } => self.relay_data(now, conn, me, session, data),
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
        let max = self.config.limits.max_pending_offers;
        if to == me || !self.peers.contains_key(&to) {
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
        let mut raw = [0u8; 16];
        self.rng.fill_bytes(&mut raw);
        let session = SessionId(raw);
        let expires = now + self.config.limits.offer_timeout;
        self.sessions.insert(
            session,
            Session {
                offerer: me,
                answerer: to,
                answered: false,
                expires,
            },
        );
        *self.pending_from.entry(me).or_default() += 1;
        *self.pending_to.entry(to).or_default() += 1;
        self.timers.insert((expires, Timer::Session(session)));
        self.send(conn, ServerMsg::OfferSent { id, session });
        self.send_peer(
            to,
            ServerMsg::Offer {
                session,
                from: me,
                description,
            },
        );
    }

    fn answer(
        &mut self,
        now: Instant,
        conn: ConnId,
        me: PeerId,
        session: SessionId,
        description: Description,
    ) {
        let lifetime = self.config.limits.session_lifetime;
        let offerer = match self.sessions.get_mut(&session) {
            Some(s) if s.answerer == me && !s.answered => {
                s.answered = true;
                // One live deadline per session: the offer's goes.
                self.timers.remove(&(s.expires, Timer::Session(session)));
                s.expires = now + lifetime;
                s.offerer
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
        self.timers
            .insert((now + lifetime, Timer::Session(session)));
        self.send_peer(
            offerer,
            ServerMsg::Answer {
                session,
                from: me,
                description,
            },
        );
        self.punch(session, offerer, me);
    }

    /// Punch sync: both peers start at T = now + max(rtt_a, rtt_b)/2 + margin on the server's
    /// clock; each is told the delay after *its* receipt, T − (now + rtt_x/2).
    fn punch(&mut self, session: SessionId, a: PeerId, b: PeerId) {
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
            self.send_peer(
                me,
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

    /// Relay over signaling: forwards a datagram between the two peers of an answered session,
    /// and keeps the session alive while it is used. Only peers of the session may use it, each
    /// datagram is at most [`Limits::max_relay_datagram`] bytes, and it counts against the
    /// connection's frame rate like any frame.
    fn relay_data(
        &mut self,
        now: Instant,
        conn: ConnId,
        me: PeerId,
        session: SessionId,
        data: String,
    ) {
        use base64::Engine as _;
        let max = self.config.limits.max_relay_datagram;
        let lifetime = self.config.limits.session_lifetime;
        let other = match self.sessions.get_mut(&session) {
            Some(s) if s.answered && (s.offerer == me || s.answerer == me) => {
                // One live deadline per session: each relay frame moves it, it does not add
                // another.
                self.timers.remove(&(s.expires, Timer::Session(session)));
                s.expires = now + lifetime;
                self.timers.insert((s.expires, Timer::Session(session)));
                if s.offerer == me {
                    s.answerer
                } else {
                    s.offerer
                }
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
        self.send_peer(other, ServerMsg::Relay { session, data });
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

    fn bind_alias(&mut self, peer: PeerId, alias: &str) -> Result<String, ErrorCode> {
        let valid = (1..=64).contains(&alias.len())
            && alias
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b));
        if !valid {
            return Err(ErrorCode::BadAlias);
        }
        let alias = alias.to_ascii_lowercase();
        match self.aliases.get(&alias) {
            Some(owner) if *owner == peer => return Ok(alias),
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
        self.aliases.insert(alias.clone(), peer);
        self.alias_count.insert(peer, count + 1);
        Ok(alias)
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
        let other = match self.sessions.get(&session) {
            Some(s) if s.offerer == me => s.answerer,
            Some(s) if s.answerer == me => s.offerer,
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
        if let Some(s) = self.sessions.remove(&session) {
            if !s.answered {
                self.unpend(s.offerer, s.answerer);
            }
            self.timers.remove(&(s.expires, Timer::Session(session)));
        }
        self.send_peer(
            other,
            ServerMsg::SessionClosed {
                session,
                reason,
                code: Some(code),
            },
        );
    }

    fn close_session(&mut self, id: SessionId, reason: &str) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        self.timers.remove(&(s.expires, Timer::Session(id)));
        if !s.answered {
            self.unpend(s.offerer, s.answerer);
        }
        for p in [s.offerer, s.answerer] {
            self.send_peer(
                p,
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

    fn forget(&mut self, _now: Instant, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        if let Phase::Authenticated { peer } = c.phase {
            if self.peers.get(&peer) == Some(&conn) {
                self.peers.remove(&peer);
                let ids: Vec<SessionId> = self
                    .sessions
                    .iter()
                    .filter(|(_, s)| s.offerer == peer || s.answerer == peer)
                    .map(|(id, _)| *id)
                    .collect();
                for id in ids {
                    self.close_session(id, "peer left");
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
                let other = if s.offerer == me {
                    s.answerer
                } else {
                    s.offerer
                };
                self.send_peer(other, m);
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
