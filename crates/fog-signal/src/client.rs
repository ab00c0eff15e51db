//! The signaling client machine: one connection to one server.
//!
//! The driver opens the WebSocket to `wss://<realm>/ws`, calls [`Client::handle_connected`], feeds
//! each text frame to [`Client::handle_frame`] and sends what [`Client::poll_frame`] returns. The
//! machine runs hello → auth (with the configured alias) by itself and reports
//! [`Event::Authenticated`]; then the application uses the commands ([`Client::connect`],
//! [`Client::answer`], [`Client::trickle`], [`Client::lookup`], [`Client::register`],
//! [`Client::ping`], [`Client::request_relay`]) and reads [`Event`]s.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use crate::identity::{KeyPair, PeerId};
use crate::msg::{
    self, Candidate, ClientMsg, Description, ErrorCode, Nonce, PROTOCOL_VERSION, RequestId,
    ServerMsg, SessionId,
};

/// Everything a client needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The node's identity.
    pub key: KeyPair,
    /// The name dialled (host of the URL); signed into the transcript.
    pub realm: String,
    /// The server key to insist on, if known (pinning); otherwise any key is signed for.
    pub server: Option<PeerId>,
    /// An alias to claim during auth.
    pub alias: Option<String>,
    /// Seeds the client nonce.
    pub seed: [u8; 32],
    /// Time allowed from connect to welcome (default 10 s).
    pub handshake_timeout: Duration,
}

impl ClientConfig {
    /// A configuration with no pin, no alias and the default handshake timeout.
    pub fn new(key: KeyPair, realm: impl Into<String>, seed: [u8; 32]) -> Self {
        ClientConfig {
            key,
            realm: realm.into(),
            server: None,
            alias: None,
            seed,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

/// What the client reports to the application.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The server accepted our identity; commands may be used now.
    Authenticated {
        /// The server's identity.
        server: PeerId,
        /// The alias bound during auth, if any.
        alias: Option<String>,
    },
    /// `register` succeeded.
    Registered {
        /// The request.
        request: RequestId,
        /// The alias as bound (lowercase).
        alias: String,
    },
    /// A lookup's answer.
    LookupResult {
        /// The request.
        request: RequestId,
        /// The key, if the target is known.
        peer: Option<PeerId>,
        /// Whether it is online.
        online: bool,
    },
    /// Our offer reached the server and was forwarded.
    OfferSent {
        /// The request.
        request: RequestId,
        /// The session for the answer and trickled candidates.
        session: SessionId,
    },
    /// A peer wants to connect.
    Offer {
        /// The session to answer.
        session: SessionId,
        /// Who (authenticated by the server).
        from: PeerId,
        /// Their description.
        description: Description,
    },
    /// Our offer was answered.
    Answer {
        /// The session.
        session: SessionId,
        /// Who answered.
        from: PeerId,
        /// Their description.
        description: Description,
    },
    /// The other peer's NAT behaviour changed since its offer or answer.
    Nat {
        /// The session.
        session: SessionId,
        /// Its behaviour now.
        nat: crate::msg::NatBehaviour,
        /// Its signature over it.
        signature: crate::msg::Sig,
    },
    /// A trickled candidate (`None`: no more).
    Candidate {
        /// The session.
        session: SessionId,
        /// The candidate.
        candidate: Option<Candidate>,
        /// The other peer's signature over it, if it signed it.
        signature: Option<crate::msg::Sig>,
    },
    /// A datagram from the other peer of `session`, through the relay over signaling.
    Relay {
        /// The session.
        session: SessionId,
        /// The datagram.
        data: Vec<u8>,
    },
    /// Start punching at `at`.
    PunchAt {
        /// The session.
        session: SessionId,
        /// The common start instant, on our clock.
        at: Instant,
    },
    /// The session ended on the server.
    SessionClosed {
        /// The session.
        session: SessionId,
        /// Why.
        reason: String,
        /// The other peer's code when it closed the session itself ([`Client::close`]);
        /// `None` when the server ended it (the peer left, the offer went unanswered).
        code: Option<u32>,
    },
    /// Relay credentials arrived.
    RelayCredentials {
        /// The request.
        request: RequestId,
        /// The TURN username.
        username: String,
        /// The TURN password.
        password: String,
        /// Lifetime.
        ttl: Duration,
        /// `turn:` URLs.
        urls: Vec<String>,
    },
    /// A round trip to the server was measured.
    Rtt(Duration),
    /// The server reported an error, or the client refused the server.
    Error {
        /// The code.
        code: ErrorCode,
        /// The request it is about.
        request: Option<RequestId>,
        /// Detail for people.
        message: String,
    },
    /// The handshake failed or timed out; the driver should close the connection.
    Failed {
        /// Why.
        code: ErrorCode,
    },
}

/// The caller misused the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientError {
    /// The command needs an authenticated connection.
    NotAuthenticated,
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("not authenticated yet")
    }
}

impl std::error::Error for ClientError {}

#[derive(Debug)]
enum Phase {
    Idle,
    AwaitChallenge { nonce: Nonce, deadline: Instant },
    AwaitWelcome { deadline: Instant },
    Ready,
    Failed,
}

/// The signaling client machine. See the [module docs](self).
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    rng: ChaCha8Rng,
    phase: Phase,
    server: Option<PeerId>,
    /// Frames to send, and whether each counts against the server's rate.
    out: VecDeque<(String, bool)>,
    events: VecDeque<Event>,
    next_request: RequestId,
    pings: BTreeMap<u32, Instant>,
    /// The frame rate the server said it holds us to.
    rate: Option<crate::msg::Rate>,
    /// Offers to us not yet answered or refused: the server does not count the frame that
    /// answers or refuses one against our rate. At most [`MAX_OWED`] are remembered (the rest
    /// are answered as ordinary, counted frames).
    owed: BTreeSet<SessionId>,
}

/// The most unanswered offers a client remembers for the rate exemption.
const MAX_OWED: usize = 1024;

impl Client {
    /// A client not yet connected.
    pub fn new(config: ClientConfig) -> Self {
        Client {
            rng: ChaCha8Rng::from_seed(config.seed),
            config,
            phase: Phase::Idle,
            server: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
            next_request: 1,
            pings: BTreeMap::new(),
            rate: None,
            owed: BTreeSet::new(),
        }
    }

    /// Our identity.
    pub fn peer_id(&self) -> PeerId {
        self.config.key.peer_id()
    }

    /// Whether commands may be used.
    pub fn is_authenticated(&self) -> bool {
        matches!(self.phase, Phase::Ready)
    }

    /// The WebSocket is open: starts the handshake. Also used after a reconnect.
    pub fn handle_connected(&mut self, now: Instant) {
        let mut nonce = [0u8; 32];
        self.rng.fill_bytes(&mut nonce);
        let nonce = Nonce(nonce);
        self.phase = Phase::AwaitChallenge {
            nonce,
            deadline: now + self.config.handshake_timeout,
        };
        self.pings.clear();
        self.push(ClientMsg::Hello {
            version: PROTOCOL_VERSION,
            nonce,
        });
    }

    /// A text frame from the server.
    pub fn handle_frame(&mut self, now: Instant, frame: &str) {
        let m = match ServerMsg::decode(frame) {
            Ok(m) => m,
            Err(e) => {
                self.events.push_back(Event::Error {
                    code: e.code(),
                    request: None,
                    message: "undecodable frame from the server".into(),
                });
                return;
            }
        };
        match m {
            ServerMsg::Challenge {
                version,
                nonce: server_nonce,
                server,
                realm: _,
            } => self.challenge(now, version, server_nonce, server),
            ServerMsg::Welcome { peer, alias, rate } => {
                if matches!(self.phase, Phase::AwaitWelcome { .. }) && peer == self.peer_id() {
                    self.phase = Phase::Ready;
                    self.rate = rate;
                    if let Some(server) = self.server {
                        self.events
                            .push_back(Event::Authenticated { server, alias });
                    }
                }
            }
            ServerMsg::Registered { id, alias } => self
                .events
                .push_back(Event::Registered { request: id, alias }),
            ServerMsg::LookupResult { id, peer, online } => {
                self.events.push_back(Event::LookupResult {
                    request: id,
                    peer,
                    online,
                })
            }
            ServerMsg::OfferSent { id, session } => self.events.push_back(Event::OfferSent {
                request: id,
                session,
            }),
            ServerMsg::Offer {
                session,
                from,
                description,
            } => {
                if self.owed.len() < MAX_OWED {
                    self.owed.insert(session);
                }
                self.events.push_back(Event::Offer {
                    session,
                    from,
                    description,
                });
            }
            ServerMsg::Answer {
                session,
                from,
                description,
            } => self.events.push_back(Event::Answer {
                session,
                from,
                description,
            }),
            ServerMsg::Nat {
                session,
                nat,
                signature,
            } => self.events.push_back(Event::Nat {
                session,
                nat,
                signature,
            }),
            ServerMsg::Candidate {
                session,
                candidate,
                signature,
            } => self.events.push_back(Event::Candidate {
                session,
                candidate,
                signature,
            }),
            ServerMsg::Relay { session, data } => {
                use base64::Engine as _;
                match base64::engine::general_purpose::STANDARD.decode(data.as_bytes()) {
                    Ok(data) => self.events.push_back(Event::Relay { session, data }),
                    // The server checks what it forwards; a bad one is the server's fault.
                    Err(_) => self.events.push_back(Event::Error {
                        code: ErrorCode::BadMessage,
                        request: None,
                        message: "relay data from the server is not base64".into(),
                    }),
                }
            }
            ServerMsg::Punch {
                session, delay_ms, ..
            } => self.events.push_back(Event::PunchAt {
                session,
                at: now + Duration::from_millis(u64::from(delay_ms)),
            }),
            ServerMsg::SessionClosed {
                session,
                reason,
                code,
            } => {
                self.owed.remove(&session);
                self.events.push_back(Event::SessionClosed {
                    session,
                    reason,
                    code,
                });
            }
            ServerMsg::RelayCredentials {
                id,
                username,
                password,
                ttl_s,
                urls,
            } => self.events.push_back(Event::RelayCredentials {
                request: id,
                username,
                password,
                ttl: Duration::from_secs(u64::from(ttl_s)),
                urls,
            }),
            ServerMsg::Pong { id } => {
                if let Some(sent) = self.pings.remove(&id) {
                    self.events
                        .push_back(Event::Rtt(now.saturating_duration_since(sent)));
                }
            }
            ServerMsg::Ping { id } => self.push(ClientMsg::Pong { id }),
            ServerMsg::Error {
                code, id, message, ..
            } => {
                let code = ErrorCode::from_code(code).unwrap_or(ErrorCode::UnknownMessage);
                self.events.push_back(Event::Error {
                    code,
                    request: id,
                    message,
                });
            }
        }
    }

    /// Fires the handshake deadline.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Phase::AwaitChallenge { deadline, .. } | Phase::AwaitWelcome { deadline } =
            self.phase
        {
            if deadline <= now {
                self.fail(ErrorCode::AuthTimeout);
            }
        }
    }

    /// The next frame to send.
    pub fn poll_frame(&mut self) -> Option<String> {
        self.out.pop_front().map(|(frame, _)| frame)
    }

    /// Whether the next frame counts against the server's rate ([`server_rate`](Self::server_rate)):
    /// all do but the answer or refusal of an offer to us (`false` when none waits).
    pub fn next_frame_counts(&self) -> bool {
        self.out.front().is_some_and(|(_, counts)| *counts)
    }

    /// Frames waiting for [`poll_frame`](Self::poll_frame).
    pub fn frames_waiting(&self) -> usize {
        self.out.len()
    }

    /// The frame rate the server holds this connection to, once its `welcome` said so.
    pub fn server_rate(&self) -> Option<crate::msg::Rate> {
        self.rate
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When [`Client::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::AwaitChallenge { deadline, .. } | Phase::AwaitWelcome { deadline } => {
                Some(deadline)
            }
            _ => None,
        }
    }

    /// Binds another alias to our key.
    pub fn register(&mut self, alias: &str) -> Result<RequestId, ClientError> {
        let id = self.request()?;
        self.push(ClientMsg::Register {
            id,
            alias: alias.into(),
        });
        Ok(id)
    }

    /// Asks whether `target` (a peer id's text or an alias) is online.
    pub fn lookup(&mut self, target: &str) -> Result<RequestId, ClientError> {
        let id = self.request()?;
        self.push(ClientMsg::Lookup {
            id,
            target: target.into(),
        });
        Ok(id)
    }

    /// Offers a connection to `to`; [`Event::OfferSent`] names the session.
    pub fn connect(&mut self, to: PeerId, offer: Description) -> Result<RequestId, ClientError> {
        let id = self.request()?;
        self.push(ClientMsg::Offer {
            id,
            to,
            description: offer,
        });
        Ok(id)
    }

    /// Answers an [`Event::Offer`].
    pub fn answer(&mut self, session: SessionId, answer: Description) -> Result<(), ClientError> {
        self.request()?;
        self.push(ClientMsg::Answer {
            session,
            description: answer,
        });
        Ok(())
    }

    /// Sends a candidate found late (`None`: no more).
    pub fn trickle(
        &mut self,
        session: SessionId,
        candidate: Option<Candidate>,
    ) -> Result<(), ClientError> {
        self.request()?;
        self.push(ClientMsg::Candidate {
            session,
            candidate,
            signature: None,
        });
        Ok(())
    }

    /// [`trickle`](Self::trickle) with the sender's signature over the candidate, which the
    /// server forwards untouched.
    pub fn trickle_signed(
        &mut self,
        session: SessionId,
        candidate: Candidate,
        signature: crate::msg::Sig,
    ) -> Result<(), ClientError> {
        self.request()?;
        self.push(ClientMsg::Candidate {
            session,
            candidate: Some(candidate),
            signature: Some(signature),
        });
        Ok(())
    }

    /// Tells the other peer of `session` that our NAT behaviour is now `nat`, with our
    /// signature over it, which the server forwards untouched.
    pub fn update_nat(
        &mut self,
        session: SessionId,
        nat: crate::msg::NatBehaviour,
        signature: crate::msg::Sig,
    ) -> Result<(), ClientError> {
        self.request()?;
        self.push(ClientMsg::Nat {
            session,
            nat,
            signature,
        });
        Ok(())
    }

    /// Sends a datagram to the other peer of an answered session through the signaling server
    /// (the relay of last resort, see `docs/signaling.md`).
    pub fn relay(&mut self, session: SessionId, data: &[u8]) -> Result<(), ClientError> {
        use base64::Engine as _;
        if !self.is_authenticated() {
            return Err(ClientError::NotAuthenticated);
        }
        let data = base64::engine::general_purpose::STANDARD.encode(data);
        self.push(ClientMsg::Relay { session, data });
        Ok(())
    }

    /// Ends `session` (answered or not: the answering peer refuses an offer this way); the
    /// other peer gets [`Event::SessionClosed`] with `code` and `reason`. A reason longer
    /// than [`MAX_CLOSE_REASON`](crate::msg::MAX_CLOSE_REASON) bytes is cut at a character
    /// boundary.
    pub fn close(
        &mut self,
        session: SessionId,
        code: u32,
        reason: &str,
    ) -> Result<(), ClientError> {
        if !self.is_authenticated() {
            return Err(ClientError::NotAuthenticated);
        }
        let mut end = reason.len().min(crate::msg::MAX_CLOSE_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        self.push(ClientMsg::Close {
            session,
            code,
            reason: reason[..end].to_owned(),
        });
        Ok(())
    }

    /// Asks for relay credentials.
    pub fn request_relay(&mut self) -> Result<RequestId, ClientError> {
        let id = self.request()?;
        self.push(ClientMsg::RelayRequest { id });
        Ok(id)
    }

    /// Measures the round trip to the server; [`Event::Rtt`] reports it.
    pub fn ping(&mut self, now: Instant) -> Result<u32, ClientError> {
        let id = self.request()?;
        // Bounded: an unanswered ping is forgotten when a newer one is 16 ahead.
        self.pings.retain(|&k, _| k.wrapping_add(16) > id);
        self.pings.insert(id, now);
        self.push(ClientMsg::Ping { id });
        Ok(id)
    }

    /// Pings whose pong has not come yet (the last 16 at most): a frame that leaves the
    /// count as it was is not a pong.
    pub fn pings_waiting(&self) -> usize {
        self.pings.len()
    }

    fn challenge(&mut self, now: Instant, version: u32, server_nonce: Nonce, server: PeerId) {
        let Phase::AwaitChallenge { nonce, deadline } = self.phase else {
            return;
        };
        let _ = now;
        if version != PROTOCOL_VERSION {
            self.fail(ErrorCode::VersionUnsupported);
            return;
        }
        if self.config.server.is_some_and(|pinned| pinned != server) {
            self.fail(ErrorCode::ServerRejected);
            return;
        }
        let me = self.peer_id();
        let alias = self.config.alias.clone();
        let transcript = msg::auth_transcript(
            &self.config.realm,
            &server,
            &nonce,
            &server_nonce,
            &me,
            alias.as_deref(),
        );
        let signature = msg::Sig(self.config.key.sign(&transcript));
        self.server = Some(server);
        self.phase = Phase::AwaitWelcome { deadline };
        self.push(ClientMsg::Auth {
            peer: me,
            challenge: server_nonce,
            signature,
            alias,
        });
    }

    fn fail(&mut self, code: ErrorCode) {
        self.phase = Phase::Failed;
        self.events.push_back(Event::Failed { code });
    }

    fn request(&mut self) -> Result<RequestId, ClientError> {
        if !self.is_authenticated() {
            return Err(ClientError::NotAuthenticated);
        }
        let id = self.next_request;
        self.next_request = self.next_request.wrapping_add(1);
        Ok(id)
    }

    fn push(&mut self, m: ClientMsg) {
        let counts = match &m {
            ClientMsg::Answer { session, .. } | ClientMsg::Close { session, .. } => {
                !self.owed.remove(session)
            }
            _ => true,
        };
        self.out.push_back((m.encode(), counts));
    }
}
