//! The TURN client machine: one allocation on one server, over UDP (RFC 8656).
//!
//! [`Client::allocate`] sends an Allocate without credentials; the server's 401 names the realm
//! and a nonce, and the Allocate goes again signed with the long-term key (RFC 8656 §7.1, RFC
//! 8489 §9.2). A 438 (stale nonce) on any request makes it go again with the new nonce. Once
//! allocated the machine keeps everything alive by itself: a Refresh a minute before the
//! allocation expires (§8.1), a CreatePermission a minute before each permission's 300 s end
//! (§9, §10.1), a ChannelBind a minute before each channel's 600 s end (§12.1), and a Binding
//! indication whenever nothing has gone to the server for [`ClientConfig::keepalive`], so that
//! the NAT in front of the client keeps its binding (a permission refresh every 4 minutes is
//! far too rare for a NAT that forgets after 2; 15 s is RFC 8445 §11's default Tr).
//!
//! [`Client::send_to`] sends ChannelData when a channel to the peer is bound and confirmed, a
//! Send indication otherwise (§11.1, §12.5); what peers send arrives as [`Event::Data`] with the
//! peer's address, whichever way the server wrapped it. Requests are retransmitted by fog-stun's
//! [`Transactions`] (RFC 8489 §6.2.1).
//!
//! Responses are accepted only from the server address, only for an outstanding transaction,
//! and, once the client has a key, only with a valid MESSAGE-INTEGRITY (RFC 8489 §9.2.5); the
//! exception is the unsigned 401 and 438, which only make the client try again.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use fog_stun::transaction::{Outcome, RetransmitConfig, Transactions};
use fog_stun::wire::Packet;
use rand::{Rng as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use crate::wire::{
    ChannelData, Class, IntegrityKey, TRANSPORT_UDP, TransactionId, TurnMessage, code, method,
};

/// A permission is refreshed this long after it was installed: a minute before its 300 s end
/// (RFC 8656 §9), leaving room for retransmissions.
pub const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// A channel is rebound this long after it was bound: a minute before its 600 s end
/// (RFC 8656 §12: channels last 10 minutes).
pub const CHANNEL_REFRESH: Duration = Duration::from_secs(540);
/// How long before expiry the allocation is refreshed (a minute, as RFC 8656 §8 suggests), or
/// half the lifetime if that is shorter.
pub const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// How many 438 answers in a row a request may get before it is given up.
const MAX_STALE_RETRIES: u8 = 3;

/// What the client needs.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The TURN server.
    pub server: SocketAddr,
    /// The local address to send from, or `None` for the driver's default socket.
    pub source: Option<SocketAddr>,
    /// USERNAME (for fog-signal's relay credentials, `<expiry>:<peer>`).
    pub username: String,
    /// The password the long-term key is made from.
    pub password: String,
    /// Seeds transaction IDs (RFC 8489 §5 wants them random).
    pub seed: u64,
    /// LIFETIME to ask for in seconds, or `None` for the server's default (RFC 8656 §7.1).
    pub lifetime: Option<u32>,
    /// Request retransmission (RFC 8489 §6.2.1).
    pub retransmit: RetransmitConfig,
    /// SOFTWARE in requests, if any (optional, RFC 8489 §14.14).
    pub software: Option<String>,
    /// Send a Binding indication when nothing went to the server for this long (default 15 s).
    pub keepalive: Duration,
}

impl ClientConfig {
    /// A client of `server` with these credentials and the defaults.
    pub fn new(
        server: SocketAddr,
        username: impl Into<String>,
        password: impl Into<String>,
        seed: u64,
    ) -> Self {
        Self {
            server,
            source: None,
            username: username.into(),
            password: password.into(),
            seed,
            lifetime: None,
            retransmit: RetransmitConfig::default(),
            software: None,
            keepalive: Duration::from_secs(15),
        }
    }
}

/// Where the allocation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// [`Client::allocate`] has not been called.
    Idle,
    /// The Allocate is under way.
    Allocating,
    /// The allocation exists.
    Allocated,
    /// [`Client::deallocate`] was called; the Refresh of lifetime 0 is under way.
    Deallocating,
    /// Deallocated, or gone: nothing more will happen.
    Closed,
}

/// Which request an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Allocate.
    Allocate,
    /// Refresh.
    Refresh,
    /// CreatePermission for this peer IP.
    CreatePermission(IpAddr),
    /// ChannelBind to this peer.
    ChannelBind(SocketAddr),
}

/// Why something failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The server refused the request with this ERROR-CODE (RFC 8656 §19). A 401 after the
    /// credentials were sent means they are wrong or expired.
    Rejected {
        /// Which request.
        request: Request,
        /// The error code.
        code: u16,
        /// The server's reason phrase.
        reason: String,
    },
    /// No answer after every retransmission (RFC 8489 §6.2.1).
    TimedOut {
        /// Which request.
        request: Request,
    },
    /// A success response lacked what RFC 8656 requires in it (XOR-RELAYED-ADDRESS,
    /// LIFETIME): the server misbehaved.
    Malformed {
        /// Which request.
        request: Request,
    },
    /// The request could not be encoded: the configured USERNAME, or the REALM or NONCE the
    /// server sent, is longer than STUN allows (RFC 8489 §14.3, §14.9, §14.10).
    Unencodable {
        /// Which request.
        request: Request,
    },
    /// A datagram did not fit in the buffer the driver gave (a local limit).
    BufferTooSmall {
        /// Bytes it needed.
        needed: usize,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Rejected {
                request,
                code,
                reason,
            } => write!(f, "{request:?} refused: {code} {reason}"),
            Self::TimedOut { request } => write!(f, "{request:?}: no answer from the server"),
            Self::Malformed { request } => write!(f, "{request:?}: malformed success response"),
            Self::Unencodable { request } => {
                write!(f, "{request:?}: credentials too long to encode")
            }
            Self::BufferTooSmall { needed } => write!(f, "buffer too small: {needed} bytes"),
        }
    }
}

impl std::error::Error for Error {}

/// How the server delivered peer data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// ChannelData (RFC 8656 §12.4).
    Channel,
    /// A Data indication (RFC 8656 §11.4).
    Indication,
}

/// What the client reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The allocation exists.
    Allocated {
        /// The relayed transport address peers send to.
        relayed: SocketAddr,
        /// The client's address as the server saw it (XOR-MAPPED-ADDRESS), if it said.
        mapped: Option<SocketAddr>,
        /// The lifetime granted.
        lifetime: Duration,
    },
    /// A Refresh succeeded.
    Refreshed {
        /// The lifetime granted.
        lifetime: Duration,
    },
    /// A permission for this peer IP was installed (first time only, not on refreshes).
    PermissionCreated {
        /// The peer IP.
        peer: IpAddr,
    },
    /// A channel was bound (first time only, not on refreshes).
    ChannelBound {
        /// The peer.
        peer: SocketAddr,
        /// The channel number.
        channel: u16,
    },
    /// A peer sent data through the relay.
    Data {
        /// The peer's address.
        peer: SocketAddr,
        /// The data.
        data: Vec<u8>,
        /// How it came.
        via: Via,
    },
    /// The allocation was deleted at our request.
    Deallocated,
    /// The server was full and named another (300 Try Alternate): the Allocate goes there,
    /// and so does everything after it.
    Redirected {
        /// The server that sent us on.
        from: SocketAddr,
        /// The one we use now.
        to: SocketAddr,
    },
    /// Something failed. Failures of Allocate or Refresh close the client
    /// ([`State::Closed`]); failures of a permission or channel drop that one only.
    Error(Error),
}

/// A command the caller cannot give now. The caller's mistake, never the network's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommandError {
    /// The command needs an allocation (state [`State::Allocated`]).
    NotAllocated,
    /// [`Client::allocate`] was called twice.
    AlreadyStarted,
    /// All 4,096 channel numbers are in use.
    NoChannelsLeft,
    /// The data is longer than a message can carry.
    TooLong,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotAllocated => write!(f, "no allocation"),
            Self::AlreadyStarted => write!(f, "allocate was already called"),
            Self::NoChannelsLeft => write!(f, "no channel numbers left"),
            Self::TooLong => write!(f, "data too long for one datagram"),
        }
    }
}

impl std::error::Error for CommandError {}

/// Counters of datagrams dropped on arrival.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Not from the server, undecodable, or a message this client does not take.
    pub dropped_malformed: u64,
    /// Responses to no outstanding transaction, or with a bad MESSAGE-INTEGRITY.
    pub dropped_unmatched: u64,
    /// ChannelData on a channel we did not bind.
    pub dropped_unknown_channel: u64,
}

#[derive(Debug, Clone)]
enum Kind {
    Allocate,
    Refresh { lifetime: u32 },
    Permission { peers: Vec<IpAddr> },
    Bind { peer: SocketAddr, channel: u16 },
}

impl Kind {
    fn request(&self) -> Request {
        match self {
            Self::Allocate => Request::Allocate,
            Self::Refresh { .. } => Request::Refresh,
            Self::Permission { peers } => Request::CreatePermission(
                peers.first().copied().unwrap_or(IpAddr::from([0, 0, 0, 0])),
            ),
            Self::Bind { peer, .. } => Request::ChannelBind(*peer),
        }
    }
}

#[derive(Debug, Clone)]
struct Pending {
    kind: Kind,
    /// Sent with credentials (so a 401 means they are wrong).
    signed: bool,
    stale_retries: u8,
}

/// A permission or channel: when to refresh it, and whether a request for it is under way.
#[derive(Debug, Clone)]
struct Kept {
    refresh_at: Option<Instant>,
    confirmed: bool,
}

/// The TURN client; see the [module docs](self).
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    state: State,
    rng: ChaCha8Rng,
    transactions: Transactions,
    pending: BTreeMap<TransactionId, Pending>,
    realm: Option<String>,
    nonce: Option<String>,
    key: Option<IntegrityKey>,
    relayed: Option<SocketAddr>,
    mapped: Option<SocketAddr>,
    expires: Option<Instant>,
    /// The lifetime last granted, in seconds, which a Refresh asks for again unless the config
    /// names one.
    granted: u32,
    /// `None` while a Refresh is under way.
    refresh_at: Option<Instant>,
    permissions: BTreeMap<IpAddr, Kept>,
    channels: BTreeMap<SocketAddr, (u16, Kept)>,
    by_number: BTreeMap<u16, SocketAddr>,
    next_channel: u16,
    /// Indications and ChannelData waiting for `poll_transmit`.
    out: VecDeque<Vec<u8>>,
    last_sent: Option<Instant>,
    events: VecDeque<Event>,
    stats: Stats,
    /// The servers that sent us on with a 300, never gone back to (RFC 8489 §10: no loops).
    redirected_from: Vec<SocketAddr>,
}

/// The most 300 (Try Alternate) answers one client follows.
pub const MAX_REDIRECTS: usize = 2;

impl Client {
    /// A client that does nothing until [`allocate`](Self::allocate).
    pub fn new(config: ClientConfig) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed ^ 0x8656_8656_8656_8656),
            transactions: Transactions::new(config.retransmit),
            config,
            state: State::Idle,
            pending: BTreeMap::new(),
            realm: None,
            nonce: None,
            key: None,
            relayed: None,
            mapped: None,
            expires: None,
            granted: 0,
            refresh_at: None,
            permissions: BTreeMap::new(),
            channels: BTreeMap::new(),
            by_number: BTreeMap::new(),
            next_channel: ChannelData::MIN_CHANNEL,
            out: VecDeque::new(),
            last_sent: None,
            events: VecDeque::new(),
            stats: Stats::default(),
            redirected_from: Vec::new(),
        }
    }

    /// The TURN server this client talks to: the configured one, or the one a 300 named.
    pub fn server(&self) -> SocketAddr {
        self.config.server
    }

    /// Where the allocation is.
    pub fn state(&self) -> State {
        self.state
    }

    /// The relayed transport address, once allocated.
    pub fn relayed_address(&self) -> Option<SocketAddr> {
        self.relayed
    }

    /// Our address as the server sees it, once allocated.
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// The channel bound (or being bound) to `peer`.
    pub fn channel(&self, peer: SocketAddr) -> Option<u16> {
        self.channels.get(&peer).map(|(n, _)| *n)
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Starts the allocation (RFC 8656 §7.1).
    pub fn allocate(&mut self, now: Instant) -> Result<(), CommandError> {
        if self.state != State::Idle {
            return Err(CommandError::AlreadyStarted);
        }
        self.state = State::Allocating;
        self.start(now, Kind::Allocate, 0);
        Ok(())
    }

    /// Lets `peer` send to us through the relay and us to it, and keeps the permission alive
    /// (RFC 8656 §9). Idempotent.
    pub fn create_permission(&mut self, now: Instant, peer: IpAddr) -> Result<(), CommandError> {
        if self.state != State::Allocated {
            return Err(CommandError::NotAllocated);
        }
        if self.permissions.contains_key(&peer) {
            return Ok(());
        }
        self.permissions.insert(
            peer,
            Kept {
                refresh_at: None,
                confirmed: false,
            },
        );
        self.start(now, Kind::Permission { peers: vec![peer] }, 0);
        Ok(())
    }

    /// Stops keeping the permission for `peer` alive: TURN has no request that removes one, so
    /// it lapses on the server 300 s after its last refresh (RFC 8656 §9). A channel bound to
    /// an address of `peer` keeps it alive until the channel is released too. Returns whether
    /// there was one.
    pub fn release_permission(&mut self, peer: IpAddr) -> bool {
        if self.channels.keys().any(|c| c.ip() == peer) {
            return false;
        }
        self.permissions.remove(&peer).is_some()
    }

    /// How many permissions the client keeps alive.
    pub fn permission_count(&self) -> usize {
        self.permissions.len()
    }

    /// Binds a channel to `peer` (which also installs the permission, RFC 8656 §12.2) and keeps
    /// it alive; returns its number. Data goes by Send indication until the server confirms.
    pub fn bind_channel(&mut self, now: Instant, peer: SocketAddr) -> Result<u16, CommandError> {
        if self.state != State::Allocated {
            return Err(CommandError::NotAllocated);
        }
        if let Some((n, _)) = self.channels.get(&peer) {
            return Ok(*n);
        }
        if self.next_channel > ChannelData::MAX_CHANNEL {
            return Err(CommandError::NoChannelsLeft);
        }
        let channel = self.next_channel;
        self.next_channel += 1;
        self.channels.insert(
            peer,
            (
                channel,
                Kept {
                    refresh_at: None,
                    confirmed: false,
                },
            ),
        );
        self.by_number.insert(channel, peer);
        // The ChannelBind installs the permission; it is then refreshed on its own 300 s clock.
        self.permissions.entry(peer.ip()).or_insert(Kept {
            refresh_at: None,
            confirmed: false,
        });
        self.start(now, Kind::Bind { peer, channel }, 0);
        Ok(channel)
    }

    /// Sends `data` to `peer` through the relay: ChannelData on a confirmed channel, else a Send
    /// indication (RFC 8656 §11.1, §12.5). Without a permission the server drops it.
    pub fn send_to(
        &mut self,
        _now: Instant,
        peer: SocketAddr,
        data: &[u8],
    ) -> Result<(), CommandError> {
        if self.state != State::Allocated {
            return Err(CommandError::NotAllocated);
        }
        let channel = self
            .channels
            .get(&peer)
            .filter(|(_, k)| k.confirmed)
            .map(|(n, _)| *n);
        let bytes = match channel {
            Some(channel) => {
                let mut buf = vec![0u8; ChannelData::encoded_len(data.len(), false)];
                let n = ChannelData { channel, data }
                    .encode(false, &mut buf)
                    .ok_or(CommandError::TooLong)?;
                buf.truncate(n);
                buf
            }
            None => {
                let mut m = TurnMessage::new(Class::Indication, method::SEND, self.tid());
                m.xor_peer_addresses = vec![peer];
                m.data = Some(data.to_vec());
                m.to_bytes(None).map_err(|_| CommandError::TooLong)?
            }
        };
        self.out.push_back(bytes);
        Ok(())
    }

    /// Refreshes the allocation now rather than at its time: for an owner that saw its NAT
    /// mapping change. The server knows an allocation by its 5-tuple (RFC 8656 §2.2), so after
    /// a rebinding the Refresh arrives from an unknown one and fails (437 Allocation Mismatch,
    /// or no answer), which closes the client with [`Event::Error`]; otherwise it is an early
    /// refresh and [`Event::Refreshed`] follows. Only when allocated and no Refresh is under way.
    pub fn refresh_now(&mut self, now: Instant) -> Result<(), CommandError> {
        if self.state != State::Allocated {
            return Err(CommandError::NotAllocated);
        }
        if self
            .pending
            .values()
            .any(|p| matches!(p.kind, Kind::Refresh { .. }))
        {
            return Ok(());
        }
        self.refresh_at = None;
        let lifetime = self.config.lifetime.unwrap_or(self.granted).max(1);
        self.start(now, Kind::Refresh { lifetime }, 0);
        Ok(())
    }

    /// Deletes the allocation with a Refresh of lifetime 0 (RFC 8656 §8.1); [`Event::Deallocated`]
    /// follows. Before the allocation exists, this just closes the client.
    pub fn deallocate(&mut self, now: Instant) {
        match self.state {
            State::Allocated => {
                self.state = State::Deallocating;
                self.permissions.clear();
                self.channels.clear();
                self.refresh_at = None;
                // Whatever else is under way is moot; its answers will find no transaction.
                for tid in std::mem::take(&mut self.pending).into_keys() {
                    self.transactions.complete(&tid);
                }
                self.start(now, Kind::Refresh { lifetime: 0 }, 0);
            }
            State::Idle | State::Allocating => self.close(),
            State::Deallocating | State::Closed => {}
        }
    }

    fn tid(&mut self) -> TransactionId {
        let mut bytes = [0u8; 12];
        self.rng.fill_bytes(&mut bytes);
        TransactionId::new(bytes)
    }

    /// Sends a request of `kind` in a new transaction, signed if the realm and nonce are known.
    fn start(&mut self, now: Instant, kind: Kind, stale_retries: u8) {
        let tid = self.tid();
        let mut m = TurnMessage::new(Class::Request, method::ALLOCATE, tid);
        match &kind {
            Kind::Allocate => {
                m.requested_transport = Some(TRANSPORT_UDP);
                m.lifetime = self.config.lifetime;
            }
            Kind::Refresh { lifetime } => {
                m.method = method::REFRESH;
                m.lifetime = Some(*lifetime);
            }
            Kind::Permission { peers } => {
                m.method = method::CREATE_PERMISSION;
                // Permissions are per IP; the port is ignored (RFC 8656 §9).
                m.xor_peer_addresses = peers.iter().map(|&ip| SocketAddr::new(ip, 0)).collect();
            }
            Kind::Bind { peer, channel } => {
                m.method = method::CHANNEL_BIND;
                m.channel_number = Some(*channel);
                m.xor_peer_addresses = vec![*peer];
            }
        }
        m.software.clone_from(&self.config.software);
        let signed = self.key.is_some();
        if signed {
            m.username = Some(self.config.username.clone());
            m.realm.clone_from(&self.realm);
            m.nonce.clone_from(&self.nonce);
        }
        let bytes = match m.to_bytes(self.key.as_ref()) {
            Ok(bytes) => bytes,
            Err(_) => {
                // Only a USERNAME, REALM or NONCE too long for STUN gets here: not something a
                // retry fixes.
                let request = kind.request();
                return self.fail(kind, Error::Unencodable { request });
            }
        };
        self.transactions
            .start(now, tid, bytes, self.config.server, self.config.source);
        self.pending.insert(
            tid,
            Pending {
                kind,
                signed,
                stale_retries,
            },
        );
    }

    fn close(&mut self) {
        self.state = State::Closed;
        self.refresh_at = None;
        self.expires = None;
        self.permissions.clear();
        self.channels.clear();
        self.by_number.clear();
        self.out.clear();
        for tid in std::mem::take(&mut self.pending).into_keys() {
            self.transactions.complete(&tid);
        }
    }

    /// A request of `kind` failed for good.
    fn fail(&mut self, kind: Kind, error: Error) {
        match kind {
            Kind::Allocate | Kind::Refresh { .. } => self.close(),
            Kind::Permission { peers } => {
                for ip in peers {
                    self.permissions.remove(&ip);
                }
            }
            Kind::Bind { peer, channel } => {
                self.channels.remove(&peer);
                self.by_number.remove(&channel);
                if self
                    .permissions
                    .get(&peer.ip())
                    .is_some_and(|k| !k.confirmed)
                {
                    self.permissions.remove(&peer.ip());
                }
            }
        }
        self.events.push_back(Event::Error(error));
    }

    fn handle_response(&mut self, now: Instant, msg: TurnMessage, bytes: &[u8]) {
        if !self.transactions.is_pending(&msg.transaction_id) {
            self.stats.dropped_unmatched += 1;
            return;
        }
        let challenge = matches!(
            msg.error_code(),
            Some(code::UNAUTHORIZED | code::STALE_NONCE)
        );
        let forged = match &self.key {
            Some(key) if msg.integrity || !challenge => {
                crate::wire::verify_integrity(bytes, key).is_err()
            }
            _ => false,
        };
        if forged {
            // Forged or corrupted: the retransmissions go on.
            self.stats.dropped_unmatched += 1;
            return;
        }
        self.transactions.complete(&msg.transaction_id);
        let Some(pending) = self.pending.remove(&msg.transaction_id) else {
            return;
        };
        match msg.error_code() {
            None => self.succeeded(now, pending.kind, &msg),
            Some(code) => self.refused(now, pending, &msg, code),
        }
    }

    fn succeeded(&mut self, now: Instant, kind: Kind, msg: &TurnMessage) {
        match kind {
            Kind::Allocate => {
                let (Some(relayed), Some(lifetime)) = (msg.xor_relayed_address, msg.lifetime)
                else {
                    return self.fail(
                        kind,
                        Error::Malformed {
                            request: Request::Allocate,
                        },
                    );
                };
                self.state = State::Allocated;
                self.relayed = Some(relayed);
                self.mapped = msg.xor_mapped_address;
                let lifetime = self.set_lifetime(now, lifetime);
                self.events.push_back(Event::Allocated {
                    relayed,
                    mapped: self.mapped,
                    lifetime,
                });
            }
            Kind::Refresh { lifetime: 0 } => {
                self.close();
                self.events.push_back(Event::Deallocated);
            }
            Kind::Refresh { .. } => {
                if self.state != State::Allocated {
                    return;
                }
                let granted = msg.lifetime.unwrap_or(0);
                if granted == 0 {
                    return self.fail(
                        kind,
                        Error::Malformed {
                            request: Request::Refresh,
                        },
                    );
                }
                let lifetime = self.set_lifetime(now, granted);
                self.events.push_back(Event::Refreshed { lifetime });
            }
            Kind::Permission { peers } => {
                for ip in peers {
                    if let Some(k) = self.permissions.get_mut(&ip) {
                        k.refresh_at = Some(now + PERMISSION_REFRESH);
                        if !k.confirmed {
                            k.confirmed = true;
                            self.events.push_back(Event::PermissionCreated { peer: ip });
                        }
                    }
                }
            }
            Kind::Bind { peer, channel } => {
                if let Some(k) = self.permissions.get_mut(&peer.ip()) {
                    if k.refresh_at.is_none() {
                        k.refresh_at = Some(now + PERMISSION_REFRESH);
                    }
                    k.confirmed = true;
                }
                if let Some((_, k)) = self.channels.get_mut(&peer) {
                    k.refresh_at = Some(now + CHANNEL_REFRESH);
                    if !k.confirmed {
                        k.confirmed = true;
                        self.events.push_back(Event::ChannelBound { peer, channel });
                    }
                }
            }
        }
    }

    /// Records a granted lifetime and schedules the Refresh.
    fn set_lifetime(&mut self, now: Instant, seconds: u32) -> Duration {
        self.granted = seconds;
        let lifetime = Duration::from_secs(seconds.into());
        self.expires = Some(now + lifetime);
        self.refresh_at = Some(now + lifetime - REFRESH_MARGIN.min(lifetime / 2));
        lifetime
    }

    fn refused(&mut self, now: Instant, pending: Pending, msg: &TurnMessage, code: u16) {
        let Pending {
            kind,
            signed,
            stale_retries,
        } = pending;
        match code {
            // RFC 8489 §9.2.5: the first 401 names the realm and nonce to sign with.
            code::UNAUTHORIZED if !signed && msg.realm.is_some() && msg.nonce.is_some() => {
                self.learn(msg);
                return self.start(now, kind, stale_retries);
            }
            code::STALE_NONCE if msg.nonce.is_some() && stale_retries < MAX_STALE_RETRIES => {
                self.learn(msg);
                return self.start(now, kind, stale_retries + 1);
            }
            // The Refresh that deletes the allocation was retransmitted after the server
            // deleted it (RFC 8656 §8.3): done.
            code::ALLOCATION_MISMATCH if matches!(kind, Kind::Refresh { lifetime: 0 }) => {
                self.close();
                self.events.push_back(Event::Deallocated);
                return;
            }
            // RFC 8489 §10 and RFC 8656 §7.4: a full server names another. Only for a signed
            // request, whose answer `handle_response` verified with our key (an unsigned 300
            // could be anyone's, sending us at a victim), at most MAX_REDIRECTS times, never
            // back to a server that sent us on, and within the address family.
            code::TRY_ALTERNATE if signed && matches!(kind, Kind::Allocate) => {
                let to = msg.alternate_server.filter(|to| {
                    *to != self.config.server
                        && !self.redirected_from.contains(to)
                        && self.redirected_from.len() < MAX_REDIRECTS
                        && to.is_ipv4() == self.config.server.is_ipv4()
                });
                if let Some(to) = to {
                    let from = std::mem::replace(&mut self.config.server, to);
                    self.redirected_from.push(from);
                    // The new server has its own realm and nonces: challenged afresh.
                    self.realm = None;
                    self.nonce = None;
                    self.key = None;
                    self.events.push_back(Event::Redirected { from, to });
                    return self.start(now, kind, 0);
                }
            }
            _ => {}
        }
        let reason = msg
            .error
            .as_ref()
            .map(|e| e.reason.clone())
            .unwrap_or_default();
        let request = kind.request();
        self.fail(
            kind,
            Error::Rejected {
                request,
                code,
                reason,
            },
        );
    }

    /// Takes REALM and NONCE from a 401 or 438 (RFC 8489 §9.2.5) and derives the key.
    fn learn(&mut self, msg: &TurnMessage) {
        if let Some(realm) = &msg.realm {
            self.realm = Some(realm.clone());
        }
        self.nonce.clone_from(&msg.nonce);
        if let Some(realm) = &self.realm {
            self.key = Some(IntegrityKey::long_term(
                &self.config.username,
                realm,
                &self.config.password,
            ));
        }
    }

    fn drain_outcomes(&mut self) {
        while let Some((tid, outcome)) = self.transactions.poll_outcome() {
            let Some(pending) = self.pending.remove(&tid) else {
                continue;
            };
            let request = pending.kind.request();
            let error = match outcome {
                Outcome::TimedOut => Error::TimedOut { request },
                Outcome::BufferTooSmall { needed } => Error::BufferTooSmall { needed },
            };
            if matches!(pending.kind, Kind::Refresh { lifetime: 0 }) {
                // The allocation will expire by itself; there is nothing left to do.
                self.close();
                self.events.push_back(Event::Error(error));
                continue;
            }
            self.fail(pending.kind, error);
        }
    }

    fn keepalive_at(&self) -> Option<Instant> {
        match self.state {
            State::Allocated => self.last_sent.map(|t| t + self.config.keepalive),
            _ => None,
        }
    }
}

impl SansIo for Client {
    type Event = Event;

    /// From the server: responses to our own transactions, Data indications, and ChannelData on
    /// a channel we bound. Other STUN from the same server (another machine's Binding on a
    /// shared socket) is left to its owner.
    fn accepts(&self, packet: &Receive<'_>) -> bool {
        if packet.source != self.config.server {
            return false;
        }
        match packet.payload.first() {
            Some(0x40..=0x4F) => ChannelData::decode(packet.payload)
                .is_ok_and(|cd| self.by_number.contains_key(&cd.channel)),
            Some(0..=3) => match Packet::new_checked(packet.payload) {
                Ok(p) => match p.class() {
                    Class::SuccessResponse | Class::ErrorResponse => {
                        self.transactions.is_pending(&p.transaction_id())
                    }
                    Class::Indication => p.method() == method::DATA,
                    Class::Request => false,
                },
                Err(_) => false,
            },
            _ => false,
        }
    }

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        if packet.source != self.config.server {
            self.stats.dropped_malformed += 1;
            return;
        }
        if matches!(packet.payload.first(), Some(0x40..=0x4F)) {
            let Ok(cd) = ChannelData::decode(packet.payload) else {
                self.stats.dropped_malformed += 1;
                return;
            };
            let Some(&peer) = self.by_number.get(&cd.channel) else {
                self.stats.dropped_unknown_channel += 1;
                return;
            };
            self.events.push_back(Event::Data {
                peer,
                data: cd.data.to_vec(),
                via: Via::Channel,
            });
            return;
        }
        let Ok(msg) = TurnMessage::decode(packet.payload) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        match (msg.class, msg.method) {
            (Class::SuccessResponse | Class::ErrorResponse, _) => {
                self.handle_response(now, msg, packet.payload);
            }
            (Class::Indication, method::DATA)
                if matches!(self.state, State::Allocated | State::Deallocating) =>
            {
                let (Some(&peer), Some(data)) = (msg.xor_peer_addresses.first(), msg.data) else {
                    self.stats.dropped_malformed += 1;
                    return;
                };
                self.events.push_back(Event::Data {
                    peer,
                    data,
                    via: Via::Indication,
                });
            }
            _ => self.stats.dropped_malformed += 1,
        }
        self.drain_outcomes();
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.transactions.handle_timeout(now);
        self.drain_outcomes();
        if self.state != State::Allocated {
            return;
        }
        if self.expires.is_some_and(|e| e <= now) {
            // Every Refresh failed quietly (the transaction timeout reports first, so this is
            // a driver that slept through it).
            self.close();
            self.events.push_back(Event::Error(Error::TimedOut {
                request: Request::Refresh,
            }));
            return;
        }
        if self.refresh_at.is_some_and(|t| t <= now) {
            self.refresh_at = None;
            let lifetime = self.config.lifetime.unwrap_or(self.granted).max(1);
            self.start(now, Kind::Refresh { lifetime }, 0);
        }
        let due: Vec<IpAddr> = self
            .permissions
            .iter()
            .filter(|(_, k)| k.refresh_at.is_some_and(|t| t <= now))
            .map(|(&ip, _)| ip)
            .take(crate::wire::MAX_PEERS_PER_MESSAGE)
            .collect();
        if !due.is_empty() {
            for ip in &due {
                if let Some(k) = self.permissions.get_mut(ip) {
                    k.refresh_at = None;
                }
            }
            self.start(now, Kind::Permission { peers: due }, 0);
        }
        let due: Vec<(SocketAddr, u16)> = self
            .channels
            .iter()
            .filter(|(_, (_, k))| k.refresh_at.is_some_and(|t| t <= now))
            .map(|(&peer, (n, _))| (peer, *n))
            .collect();
        for (peer, channel) in due {
            if let Some((_, k)) = self.channels.get_mut(&peer) {
                k.refresh_at = None;
            }
            self.start(now, Kind::Bind { peer, channel }, 0);
        }
        if self.keepalive_at().is_some_and(|t| t <= now) {
            // Moved now, not when polled, so that the deadline is never in the past meanwhile.
            self.last_sent = Some(now);
            let m = TurnMessage::new(Class::Indication, method::BINDING, self.tid());
            if let Ok(bytes) = m.to_bytes(None) {
                self.out.push_back(bytes);
            }
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if let Some(t) = self.transactions.poll_transmit(now, buf) {
            self.last_sent = Some(now);
            return Some(t);
        }
        while let Some(bytes) = self.out.pop_front() {
            let Some(dst) = buf.get_mut(..bytes.len()) else {
                self.events.push_back(Event::Error(Error::BufferTooSmall {
                    needed: bytes.len(),
                }));
                continue;
            };
            dst.copy_from_slice(&bytes);
            self.last_sent = Some(now);
            let t = Transmit::new(self.config.server, bytes.len());
            return Some(match self.config.source {
                Some(source) => t.from_source(source),
                None => t,
            });
        }
        None
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.drain_outcomes();
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let mut next = self.transactions.poll_timeout();
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if self.state == State::Allocated {
            consider(self.refresh_at);
            consider(self.expires);
            consider(self.keepalive_at());
            for k in self.permissions.values() {
                consider(k.refresh_at);
            }
            for (_, k) in self.channels.values() {
                consider(k.refresh_at);
            }
        }
        next
    }
}

#[cfg(test)]
mod tests;
