//! The TURN server machine (RFC 8656, clients over UDP or TCP): allocations, permissions, channels, relaying.
//!
//! The server listens on one address ([`ServerConfig::listen`]). Each allocation is keyed by its
//! 5-tuple (client address, listen address, UDP; RFC 8656 §2) and owns one relayed transport
//! address, `relay_ip` plus a port drawn at random from `relay_ports` with the seeded RNG (§7.2
//! suggests the dynamic range; random, so that one allocation does not tell where the next is).
//! Datagrams to and from peers use that address: the server asks its driver to bind it with a
//! [`SocketRequest::Bind`] drained before the Allocate's answer (so a peer's first datagram finds
//! a socket however early it comes) and to close it with a [`SocketRequest::Unbind`] when the
//! allocation ends (a port the driver cannot bind moves the allocation to another before the
//! answer leaves: [`SansIo::handle_bind_error`]); its transmits towards peers carry it as
//! [`Transmit::source`], and
//! [`Server::accepts`] takes datagrams that arrive on it.
//!
//! # Clients over TCP (RFC 8656 §3.1)
//!
//! A client may reach the server over a TCP (or TLS) connection instead; the relayed leg stays
//! UDP. The driver owns the connection, cuts its bytes into messages
//! ([`crate::wire::stream::Framer`]) and hands each to [`Server::handle_stream_message`]; the
//! 5-tuple's transport is TCP, so the same client address over UDP is another allocation. Such
//! an allocation is authenticated and counted against the same quotas as any other; what goes
//! to the client (answers, ChannelData padded to 4 bytes as §12.5 requires over TCP, Data
//! indications) comes out of [`Server::poll_stream_transmit`], and [`Server::close_stream`]
//! (the connection closed) ends the allocation.
//!
//! # Authentication and what an unauthenticated datagram can cost
//!
//! Every request but Binding needs long-term credentials of the `use-auth-secret` scheme
//! ([`crate::auth`]): the server recomputes the password from USERNAME and the shared secret, and
//! refuses usernames whose expiry has passed (401). There is no other way in, so the server is
//! never an open relay. Nonces are stateless: the expiry and an HMAC (keyed from the seed) over
//! it and the client's address, so a stranger's request costs no memory; an expired nonce gets
//! 438 (RFC 8489 §9.2.4). An unauthenticated request is answered by at most a 401/438 with REALM
//! and NONCE (under 160 bytes with the longest realm [`ServerConfig::new`] accepts), and only
//! while its source IP is within [`Limits::unauthenticated_rate`] (fog-stun's per-source limiter),
//! so a spoofed source cannot turn the server into a reflector; indications and malformed
//! datagrams are never answered.
//!
//! # Which peers ([`PeerPolicy`])
//!
//! Permissions, channel binds and Send indications towards unspecified, loopback, link-local,
//! multicast, broadcast, private (RFC 1918, ULA) and carrier-grade addresses, their IPv6 forms
//! and IPv4 addresses embedded in IPv6, and the server's own service addresses are refused (403,
//! counted in [`Stats::refused_peer`]; a Send indication is dropped and counted in
//! [`Stats::dropped_forbidden_peer`]) unless [`ServerConfig::peers`] allows them: without this
//! any authenticated client could reach the relay host's loopback services and its private
//! network (the hole of coturn's CVE-2020-26262). RFC 8656 §21.3 leaves that filter to the
//! server and §9 lets it answer 403.
//!
//! # Quotas ([`Limits`])
//!
//! Allocations in total (1,000) and per user (10; the user is the part of the username after
//! the colon), lifetime (600 s by default, 3,600 s at most, RFC 8656 §7.2), permissions and
//! channels per allocation (64 each), and relayed bandwidth per allocation: a token bucket of
//! 1,000,000 bytes/s with a burst of as much, counting application bytes in both directions.
//! Anything over is dropped and counted in [`Stats`].

mod bucket;
mod peer;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, SocketRequest, Transmit};
use fog_stun::server::{RateLimit, RateLimiter, Verdict};
use fog_stun::wire::{Class, IntegrityKey, TransactionId};
use hmac::{Hmac, Mac as _};
use rand::{Rng as _, RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use crate::auth::{AuthSecret, TimedUsername};
use crate::wire::{AddressFamily, ChannelData, TRANSPORT_UDP, TurnMessage, code, method};
use bucket::TokenBucket;
pub use peer::{IpPrefix, PeerPolicy, PrefixError, Refusal, ReservedClass, embedded_v4};

/// How long a permission lives (RFC 8656 §9: 300 s, not configurable).
pub const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
/// How long a channel binding lives (RFC 8656 §12: 10 minutes).
pub const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
/// Longest realm [`ServerConfig::new`] accepts, which bounds the 401 a stranger can get.
pub const MAX_REALM_LEN: usize = 64;
/// The dynamic port range (RFC 6335 §6), which RFC 8656 §7.2 suggests for relayed addresses.
pub const DEFAULT_RELAY_PORTS: RangeInclusive<u16> = 49152..=65535;

/// Quotas; the defaults are in the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Allocations at once, all users together (508 beyond).
    pub max_allocations: usize,
    /// Allocations at once per user (486 beyond).
    pub max_allocations_per_user: usize,
    /// Lifetime given when the client asks for none or for less (RFC 8656 §7.2: 10 minutes).
    pub default_lifetime: Duration,
    /// Longest lifetime granted (RFC 8656 §7.2 suggests an hour).
    pub max_lifetime: Duration,
    /// Permissions per allocation (508 beyond).
    pub max_permissions: usize,
    /// Channels per allocation (508 beyond).
    pub max_channels: usize,
    /// Relayed application bytes per second per allocation, both directions together; 0 for
    /// no limit.
    pub bandwidth_bytes_per_s: u64,
    /// How many bytes an allocation may send at once before the rate applies.
    pub burst_bytes: u64,
    /// How long a nonce stays valid (coturn's default `stale-nonce` is 600 s).
    pub nonce_lifetime: Duration,
    /// Answers to requests without valid credentials (401, 438, 400, Binding), per source IP
    /// (fog-stun's limiter, 20/s with a burst of 40 by default); `None` for no limit. A real
    /// client needs one such answer per allocation and one per nonce expiry, so only a reflector
    /// ever meets the limit.
    pub unauthenticated_rate: Option<RateLimit>,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_allocations: 1000,
            max_allocations_per_user: 10,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            max_permissions: 64,
            max_channels: 64,
            bandwidth_bytes_per_s: 1_000_000,
            burst_bytes: 1_000_000,
            nonce_lifetime: Duration::from_secs(600),
            unauthenticated_rate: Some(RateLimit::default()),
        }
    }
}

/// Everything a server needs; every field maps to one command-line flag of a future fogd.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The address clients send to (3478 is TURN's port, RFC 8656 §3).
    pub listen: SocketAddr,
    /// REALM (RFC 8489 §14.9), at most [`MAX_REALM_LEN`] bytes.
    pub realm: String,
    /// The `use-auth-secret` secret.
    pub secret: AuthSecret,
    /// The IP of relayed transport addresses (often the listen IP).
    pub relay_ip: IpAddr,
    /// The ports relayed transport addresses are drawn from.
    pub relay_ports: RangeInclusive<u16>,
    /// Seeds relayed ports, nonce keys and Data indication transaction IDs.
    pub seed: [u8; 32],
    /// One instant and the Unix time it corresponds to: usernames carry Unix expiry times and
    /// the machine has no wall clock.
    pub unix_epoch: (Instant, u64),
    /// Quotas.
    pub limits: Limits,
    /// SOFTWARE in authenticated responses, if any (RFC 8489 §14.14).
    pub software: Option<String>,
    /// Which peers the relay may reach; the default refuses reserved and private addresses.
    pub peers: PeerPolicy,
}

impl ServerConfig {
    /// A server on `listen` relaying from `listen`'s IP over [`DEFAULT_RELAY_PORTS`], with
    /// default [`Limits`], the default [`PeerPolicy`] (no reserved or private peers) and no
    /// SOFTWARE.
    pub fn new(
        listen: SocketAddr,
        realm: impl Into<String>,
        secret: AuthSecret,
        seed: [u8; 32],
        unix_epoch: (Instant, u64),
    ) -> Self {
        Self {
            listen,
            realm: realm.into(),
            secret,
            relay_ip: listen.ip(),
            relay_ports: DEFAULT_RELAY_PORTS,
            seed,
            unix_epoch,
            limits: Limits::default(),
            software: None,
            peers: PeerPolicy::default(),
        }
    }
}

/// What the server reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// An allocation was made; its relayed address was asked bound just before.
    Allocated {
        /// The client's address (its side of the 5-tuple).
        client: SocketAddr,
        /// The relayed transport address.
        relayed: SocketAddr,
        /// The user part of the username.
        user: String,
    },
    /// An allocation ended; its relayed address was asked unbound.
    Released {
        /// The client's address.
        client: SocketAddr,
        /// The relayed transport address.
        relayed: SocketAddr,
        /// Why.
        reason: Release,
    },
}

/// Bytes for a client's TCP connection ([`Server::poll_stream_transmit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTransmit {
    /// The client's address: which connection.
    pub client: SocketAddr,
    /// One whole message.
    pub bytes: Vec<u8>,
}

/// Why an allocation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Its lifetime ran out without a Refresh (RFC 8656 §8).
    Expired,
    /// The client asked with a Refresh of lifetime 0 (RFC 8656 §8.2).
    Deallocated,
    /// The client's TCP connection closed ([`Server::close_stream`]): an allocation over TCP
    /// lives no longer than its connection (RFC 8656 §3.1).
    ConnectionClosed,
}

/// Counters. Every datagram handed to [`Server::handle_packet`] lands in exactly one of the
/// counters marked (in).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// (in) Requests answered, with success or error.
    pub requests: u64,
    /// Of those, Allocates sent to the alternate server (300) because this one was full.
    pub redirected: u64,
    /// Of those, 401 and 438 answers to requests without valid credentials or nonce.
    pub unauthenticated: u64,
    /// (in) Requests without valid credentials left unanswered: their source was over
    /// [`Limits::unauthenticated_rate`].
    pub dropped_rate_limited: u64,
    /// (in) Binding indications: a client's keepalive for its NAT binding, never answered.
    pub keepalives: u64,
    /// (in) Send indications and ChannelData relayed to a peer.
    pub relayed_to_peer: u64,
    /// (in) Datagrams from peers relayed to a client.
    pub relayed_to_client: u64,
    /// (in) From a peer (or to a peer) without a permission: dropped (RFC 8656 §9).
    pub dropped_no_permission: u64,
    /// (in) On a 5-tuple or relayed address without an allocation, or on an unbound channel.
    pub dropped_no_allocation: u64,
    /// (in) Over the allocation's bandwidth quota.
    pub dropped_bandwidth: u64,
    /// (in) Not STUN or ChannelData, undecodable, a response, or an indication not handled.
    pub dropped_malformed: u64,
    /// Transmits dropped because the driver's buffer was too small.
    pub dropped_buffer: u64,
    /// Relayed addresses the driver could not bind ([`SansIo::handle_bind_error`]).
    pub relay_bind_errors: u64,
    /// Of `requests`, CreatePermission and ChannelBind refused with 403 because a peer address
    /// is one [`ServerConfig::peers`] forbids.
    pub refused_peer: u64,
    /// (in) Send indications to a peer address [`ServerConfig::peers`] forbids: dropped.
    pub dropped_forbidden_peer: u64,
}

/// How a client reaches the server: the transport of its 5-tuple (RFC 8656 §3.1). The relayed
/// leg is UDP either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ClientTransport {
    /// Datagrams on the listen socket ([`SansIo::handle_packet`], [`SansIo::poll_transmit`]).
    Udp,
    /// A TCP (or TLS) connection the driver frames ([`Server::handle_stream_message`],
    /// [`Server::poll_stream_transmit`]).
    Tcp,
}

/// A TURN allocation's 5-tuple (RFC 8656 §2): the same client address over UDP and over TCP
/// names two allocations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct FiveTuple {
    client: SocketAddr,
    server: SocketAddr,
    transport: ClientTransport,
}

#[derive(Debug, Clone)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Debug, Clone)]
struct Allocation {
    relayed: SocketAddr,
    username: String,
    user: String,
    key: IntegrityKey,
    expires: Instant,
    /// The Allocate that made it, so that a retransmission gets the same answer (RFC 8656 §7.2).
    allocate_tid: TransactionId,
    granted: u32,
    /// Whether the Allocate asked for an even port (EVEN-PORT without R).
    even: bool,
    /// Relayed ports tried so far whose bind failed.
    bind_failures: u8,
    permissions: BTreeMap<IpAddr, Instant>,
    channels: BTreeMap<u16, Channel>,
    channel_by_peer: BTreeMap<SocketAddr, u16>,
    bucket: TokenBucket,
}

impl Allocation {
    fn has_permission(&self, now: Instant, ip: IpAddr) -> bool {
        self.permissions.get(&ip).is_some_and(|&t| t > now)
    }

    fn next_deadline(&self) -> Instant {
        let perms = self.permissions.values().copied();
        let chans = self.channels.values().map(|c| c.expires);
        perms.chain(chans).fold(self.expires, Instant::min)
    }

    fn expire_children(&mut self, now: Instant) {
        self.permissions.retain(|_, &mut t| t > now);
        let gone: Vec<u16> = self
            .channels
            .iter()
            .filter(|(_, c)| c.expires <= now)
            .map(|(&n, _)| n)
            .collect();
        for n in gone {
            if let Some(c) = self.channels.remove(&n) {
                self.channel_by_peer.remove(&c.peer);
            }
        }
    }
}

/// Who a request was authenticated as.
struct Auth {
    username: String,
    user: String,
    key: IntegrityKey,
}

/// A message to send: a datagram waiting for `poll_transmit`, or bytes for a client's stream
/// waiting for `poll_stream_transmit`.
#[derive(Debug)]
struct Out {
    to: SocketAddr,
    from: SocketAddr,
    bytes: Vec<u8>,
    /// For the success answer to an Allocate: the relayed address it names, so that a failed
    /// bind of that address can change the answer before it leaves.
    allocated: Option<SocketAddr>,
}

/// The TURN server; see the [module docs](self).
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    rng: ChaCha8Rng,
    limiter: Option<RateLimiter>,
    allocations: BTreeMap<FiveTuple, Allocation>,
    by_relay: BTreeMap<SocketAddr, FiveTuple>,
    per_user: BTreeMap<String, usize>,
    out: VecDeque<Out>,
    /// What goes to clients over TCP, for `poll_stream_transmit`.
    stream_out: VecDeque<Out>,
    /// Binds and unbinds of relayed addresses for the driver, drained before `out`.
    sockets: VecDeque<SocketRequest>,
    /// Relayed addresses whose bind failed lately, oldest first, skipped by `pick_port`.
    unbindable: VecDeque<SocketAddr>,
    events: VecDeque<Event>,
    stats: Stats,
    /// Where a full server sends new allocations ([`set_alternate`](Self::set_alternate)).
    alternate: Option<SocketAddr>,
    /// The earliest expiry of any allocation, permission or channel. Recomputed after requests
    /// and timeouts only: relayed data changes no deadline, so the data path never scans the
    /// table.
    deadline: Option<Instant>,
}

type HmacSha1 = Hmac<sha1::Sha1>;

/// Relayed ports an allocation may try before its Allocate gets a 508.
pub const MAX_BIND_FAILURES: u8 = 8;
/// How many relayed addresses that failed to bind are remembered and skipped.
pub const UNBINDABLE_MEMORY: usize = 64;

/// The success answer to the Allocate that made `alloc` (RFC 8656 §7.2), also for its
/// retransmissions.
fn allocate_success(ft: FiveTuple, alloc: &Allocation) -> TurnMessage {
    let mut m = TurnMessage::new(Class::SuccessResponse, method::ALLOCATE, alloc.allocate_tid);
    m.xor_relayed_address = Some(alloc.relayed);
    m.lifetime = Some(alloc.granted);
    m.xor_mapped_address = Some(ft.client);
    m
}

/// Hex digits of a nonce: 16 for the expiry, 16 for the truncated HMAC.
const NONCE_LEN: usize = 32;

impl Server {
    /// A server with no allocations.
    ///
    /// # Panics
    ///
    /// If the realm is empty or longer than [`MAX_REALM_LEN`], the relay port range is empty, or
    /// the default lifetime is longer than the maximum.
    pub fn new(config: ServerConfig) -> Self {
        assert!(
            !config.realm.is_empty() && config.realm.len() <= MAX_REALM_LEN,
            "realm must be 1..={MAX_REALM_LEN} bytes"
        );
        assert!(!config.relay_ports.is_empty(), "relay port range is empty");
        assert!(
            config.limits.default_lifetime <= config.limits.max_lifetime,
            "default lifetime above the maximum"
        );
        Self {
            rng: ChaCha8Rng::from_seed(config.seed),
            limiter: config.limits.unauthenticated_rate.map(RateLimiter::new),
            config,
            allocations: BTreeMap::new(),
            by_relay: BTreeMap::new(),
            per_user: BTreeMap::new(),
            out: VecDeque::new(),
            stream_out: VecDeque::new(),
            sockets: VecDeque::new(),
            unbindable: VecDeque::new(),
            events: VecDeque::new(),
            stats: Stats::default(),
            alternate: None,
            deadline: None,
        }
    }

    fn update_deadline(&mut self) {
        self.deadline = self
            .allocations
            .values()
            .map(Allocation::next_deadline)
            .min();
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Another server of the same deployment (same secret) that has room: an Allocate that
    /// finds this one full ([`Limits::max_allocations`]) is answered 300 Try Alternate with it
    /// (RFC 8489 §10, RFC 8656 §7.2) instead of 508, so load is shed rather than refused. A
    /// cluster sets it to its least-loaded instance and clears it when there is none; this
    /// server's own address is never used. It is a UDP address: only clients over UDP are
    /// sent there; one over TCP or TLS gets the 508.
    pub fn set_alternate(&mut self, alternate: Option<SocketAddr>) {
        self.alternate = alternate.filter(|a| *a != self.config.listen);
    }

    /// The relayed address of the allocation made over the TCP connection from `client`, if any.
    pub fn stream_relayed_address(&self, client: SocketAddr) -> Option<SocketAddr> {
        self.allocations
            .get(&self.stream_tuple(client))
            .map(|a| a.relayed)
    }

    fn stream_tuple(&self, client: SocketAddr) -> FiveTuple {
        FiveTuple {
            client,
            server: self.config.listen,
            transport: ClientTransport::Tcp,
        }
    }

    /// One message a client sent on its TCP (or TLS) connection, as
    /// [`Framer`](crate::wire::stream::Framer) cut it: a STUN message or a ChannelData message
    /// (RFC 8656 §3.1). It is handled as a datagram on the listen address would be, under the
    /// 5-tuple (`client`, listen address, TCP); the answers and the data relayed to the client
    /// come out of [`poll_stream_transmit`](Self::poll_stream_transmit). Drain as after
    /// [`SansIo::handle_packet`] (socket requests, transmits, events), then the stream
    /// transmits: an Allocate's relayed address is bound (or moved) before its answer leaves.
    pub fn handle_stream_message(&mut self, now: Instant, client: SocketAddr, message: &[u8]) {
        let ft = self.stream_tuple(client);
        self.on_client_message(now, ft, message);
    }

    /// The client's TCP connection from `client` closed: its allocation, if any, ends
    /// ([`Release::ConnectionClosed`]), and what was still queued for it is dropped.
    pub fn close_stream(&mut self, client: SocketAddr) {
        let ft = self.stream_tuple(client);
        self.release(ft, Release::ConnectionClosed);
        self.stream_out.retain(|o| o.to != client);
        self.update_deadline();
    }

    /// The next message for a client's TCP connection: whole STUN or ChannelData messages
    /// (padded, RFC 8656 §12.5), to be written to the connection from `client` in order.
    pub fn poll_stream_transmit(&mut self) -> Option<StreamTransmit> {
        self.stream_out.pop_front().map(|o| StreamTransmit {
            client: o.to,
            bytes: o.bytes,
        })
    }

    /// Live allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// The relayed address of the allocation of `client` (on the listen address), if any.
    pub fn relayed_address(&self, client: SocketAddr) -> Option<SocketAddr> {
        self.allocations
            .get(&FiveTuple {
                client,
                server: self.config.listen,
                transport: ClientTransport::Udp,
            })
            .map(|a| a.relayed)
    }

    fn unix_now(&self, now: Instant) -> u64 {
        let (at, unix) = self.config.unix_epoch;
        unix.saturating_add(now.saturating_duration_since(at).as_secs())
    }

    // ---- nonces (RFC 8489 §9.2) -----------------------------------------------------------

    fn nonce_mac(&self, expiry: u64, client: SocketAddr) -> HmacSha1 {
        let mut mac =
            HmacSha1::new_from_slice(&self.config.seed).expect("HMAC takes keys of any length");
        mac.update(b"fog-turn nonce");
        mac.update(&expiry.to_be_bytes());
        match client.ip() {
            IpAddr::V4(ip) => mac.update(&ip.octets()),
            IpAddr::V6(ip) => mac.update(&ip.octets()),
        }
        mac.update(&client.port().to_be_bytes());
        mac
    }

    fn new_nonce(&self, now: Instant, client: SocketAddr) -> String {
        let expiry = self
            .unix_now(now)
            .saturating_add(self.config.limits.nonce_lifetime.as_secs());
        let tag = self.nonce_mac(expiry, client).finalize().into_bytes();
        let mut nonce = format!("{expiry:016x}");
        for b in &tag[..8] {
            nonce.push_str(&format!("{b:02x}"));
        }
        nonce
    }

    /// Whether `nonce` is one this server made for `client` and has not expired.
    fn nonce_valid(&self, now: Instant, client: SocketAddr, nonce: &str) -> bool {
        if nonce.len() != NONCE_LEN || !nonce.is_ascii() {
            return false;
        }
        let Ok(expiry) = u64::from_str_radix(&nonce[..16], 16) else {
            return false;
        };
        let mut tag = [0u8; 8];
        for (i, b) in tag.iter_mut().enumerate() {
            match u8::from_str_radix(&nonce[16 + 2 * i..18 + 2 * i], 16) {
                Ok(v) => *b = v,
                Err(_) => return false,
            }
        }
        self.nonce_mac(expiry, client)
            .verify_truncated_left(&tag)
            .is_ok()
            && self.unix_now(now) < expiry
    }

    // ---- output ---------------------------------------------------------------------------

    fn send(&mut self, to: SocketAddr, from: SocketAddr, bytes: Vec<u8>) {
        self.out.push_back(Out {
            to,
            from,
            bytes,
            allocated: None,
        });
    }

    /// Bytes for a client, on the transport of its 5-tuple.
    fn send_client(&mut self, ft: FiveTuple, bytes: Vec<u8>) {
        let out = Out {
            to: ft.client,
            from: ft.server,
            bytes,
            allocated: None,
        };
        match ft.transport {
            ClientTransport::Udp => self.out.push_back(out),
            ClientTransport::Tcp => self.stream_out.push_back(out),
        }
    }

    /// The queue of messages to clients over `transport`.
    fn queue_mut(&mut self, transport: ClientTransport) -> &mut VecDeque<Out> {
        match transport {
            ClientTransport::Udp => &mut self.out,
            ClientTransport::Tcp => &mut self.stream_out,
        }
    }

    /// The last message queued for the client of `ft`.
    fn last_out(&mut self, ft: FiveTuple) -> Option<&mut Out> {
        self.queue_mut(ft.transport).back_mut()
    }

    /// Answers a client on the listen address, signed with `key` when given.
    fn reply(&mut self, ft: FiveTuple, mut msg: TurnMessage, key: Option<&IntegrityKey>) {
        self.stats.requests += 1;
        if key.is_some() {
            msg.software.clone_from(&self.config.software);
        }
        // Encoding fails only for values this machine chose; nothing is sent then.
        if let Ok(bytes) = msg.to_bytes(key) {
            self.send_client(ft, bytes);
        }
    }

    /// Answers a request that carried no valid credentials, if its source is within its rate;
    /// else counts it and stays silent.
    fn reply_unsigned(&mut self, now: Instant, to: FiveTuple, msg: TurnMessage) {
        if let Some(limiter) = &mut self.limiter {
            if limiter.check(now, to.client.ip()) != Verdict::Allowed {
                self.stats.dropped_rate_limited += 1;
                return;
            }
        }
        if matches!(
            msg.error_code(),
            Some(code::UNAUTHORIZED | code::STALE_NONCE)
        ) {
            self.stats.unauthenticated += 1;
        }
        self.reply(to, msg, None);
    }

    /// A 403 for a peer address the policy forbids (RFC 8656 §9, §12.2), counted.
    fn refuse_peer(&mut self, to: FiveTuple, request: &TurnMessage, key: &IntegrityKey) {
        self.stats.refused_peer += 1;
        self.error(to, request, code::FORBIDDEN, key);
    }

    fn error(&mut self, to: FiveTuple, request: &TurnMessage, code: u16, key: &IntegrityKey) {
        self.reply(to, TurnMessage::error_response(request, code), Some(key));
    }

    /// A 401 or 438 carrying REALM and a fresh NONCE, unsigned (RFC 8489 §9.2.4).
    fn challenge(&mut self, now: Instant, to: FiveTuple, request: &TurnMessage, code: u16) {
        let mut m = TurnMessage::error_response(request, code);
        m.realm = Some(self.config.realm.clone());
        m.nonce = Some(self.new_nonce(now, to.client));
        self.reply_unsigned(now, to, m);
    }

    // ---- input ----------------------------------------------------------------------------

    fn on_client_datagram(&mut self, now: Instant, p: Receive<'_>) {
        let ft = FiveTuple {
            client: p.source,
            server: p.local,
            transport: ClientTransport::Udp,
        };
        self.on_client_message(now, ft, p.payload);
    }

    /// A datagram on the listen socket, or a message framed from a client's stream.
    fn on_client_message(&mut self, now: Instant, ft: FiveTuple, payload: &[u8]) {
        match payload.first() {
            Some(0..=3) => {}
            // Channels 0x4000–0x7FFF ([`ChannelData::MAX_CHANNEL_ACCEPTED`]): the listen
            // socket carries TURN alone, so the first bytes RFC 9443 gives QUIC are free here.
            Some(0x40..=0x7F) => return self.channel_data(now, ft, payload),
            _ => {
                self.stats.dropped_malformed += 1;
                return;
            }
        }
        let Ok(msg) = TurnMessage::decode(payload) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        match (msg.class, msg.method) {
            (Class::Request, method::BINDING) => {
                // RFC 8656 §2: a TURN server is a STUN server too; the answer is no larger
                // than the request's header plus one address.
                let mut m =
                    TurnMessage::new(Class::SuccessResponse, method::BINDING, msg.transaction_id);
                m.xor_mapped_address = Some(ft.client);
                self.reply_unsigned(now, ft, m);
            }
            (Class::Request, _) => {
                self.request(now, ft, &msg, payload);
                self.update_deadline();
            }
            (Class::Indication, method::SEND) => self.send_indication(now, ft, &msg),
            (Class::Indication, method::BINDING) => self.stats.keepalives += 1,
            _ => self.stats.dropped_malformed += 1,
        }
    }

    /// RFC 8489 §9.2.4, in its order: no MESSAGE-INTEGRITY → 401; missing USERNAME, REALM or
    /// NONCE → 400; stale or foreign nonce → 438; unknown or expired username, or a wrong
    /// MESSAGE-INTEGRITY → 401.
    fn authenticate(
        &mut self,
        now: Instant,
        from: FiveTuple,
        msg: &TurnMessage,
        bytes: &[u8],
    ) -> Option<Auth> {
        if !msg.integrity {
            self.challenge(now, from, msg, code::UNAUTHORIZED);
            return None;
        }
        let (Some(username), Some(realm), Some(nonce)) = (&msg.username, &msg.realm, &msg.nonce)
        else {
            self.reply_unsigned(
                now,
                from,
                TurnMessage::error_response(msg, code::BAD_REQUEST),
            );
            return None;
        };
        if !self.nonce_valid(now, from.client, nonce) {
            self.challenge(now, from, msg, code::STALE_NONCE);
            return None;
        }
        let Some(timed) = TimedUsername::parse(username) else {
            self.challenge(now, from, msg, code::UNAUTHORIZED);
            return None;
        };
        // The user part names whose quota an allocation counts against; an empty one (`<expiry>:`
        // or a bare `<expiry>`) would pool every such client into one anonymous user.
        if timed.user.is_empty() {
            self.challenge(now, from, msg, code::UNAUTHORIZED);
            return None;
        }
        if timed.expiry <= self.unix_now(now) || *realm != self.config.realm {
            self.challenge(now, from, msg, code::UNAUTHORIZED);
            return None;
        }
        let password = self.config.secret.password(username);
        let key = IntegrityKey::long_term(username, realm, &password);
        if crate::wire::verify_integrity(bytes, &key).is_err() {
            self.challenge(now, from, msg, code::UNAUTHORIZED);
            return None;
        }
        Some(Auth {
            username: username.clone(),
            user: timed.user.to_owned(),
            key,
        })
    }

    fn request(&mut self, now: Instant, ft: FiveTuple, msg: &TurnMessage, bytes: &[u8]) {
        let known = [
            method::ALLOCATE,
            method::REFRESH,
            method::CREATE_PERMISSION,
            method::CHANNEL_BIND,
        ];
        if !known.contains(&msg.method) {
            let m = TurnMessage::error_response(msg, code::BAD_REQUEST);
            return self.reply_unsigned(now, ft, m);
        }
        let Some(auth) = self.authenticate(now, ft, msg, bytes) else {
            return;
        };
        // Checked after authentication, so that a stranger never gets the list back.
        if !msg.unknown_required.is_empty() {
            let mut m = TurnMessage::error_response(msg, code::UNKNOWN_ATTRIBUTE);
            m.unknown_attributes = msg.unknown_required.clone();
            self.reply(ft, m, Some(&auth.key));
            return;
        }
        if msg.method == method::ALLOCATE {
            return self.allocate(now, ft, msg, auth);
        }
        // Every other request acts on an existing allocation made with the same username
        // (RFC 8656 §8.2, §10.2, §12.2: 437, then 441).
        let Some(alloc) = self.allocations.get_mut(&ft).filter(|a| a.expires > now) else {
            return self.error(ft, msg, code::ALLOCATION_MISMATCH, &auth.key);
        };
        // A permission or channel whose timer has not fired yet must not block a rebind.
        alloc.expire_children(now);
        if alloc.username != auth.username {
            return self.error(ft, msg, code::WRONG_CREDENTIALS, &auth.key);
        }
        match msg.method {
            method::REFRESH => self.refresh(now, ft, msg, &auth.key),
            method::CREATE_PERMISSION => self.create_permission(now, ft, msg, &auth.key),
            _ => self.channel_bind(now, ft, msg, &auth.key),
        }
    }

    /// The lifetime to grant (RFC 8656 §7.2, §8.2): the request's, clamped between the default
    /// and the maximum.
    fn lifetime(&self, requested: Option<u32>) -> u32 {
        let l = &self.config.limits;
        let default = l.default_lifetime.as_secs();
        let max = l.max_lifetime.as_secs();
        let s = requested.map_or(default, u64::from).clamp(default, max);
        u32::try_from(s).unwrap_or(u32::MAX)
    }

    /// RFC 8656 §7.2.
    fn allocate(&mut self, now: Instant, ft: FiveTuple, msg: &TurnMessage, auth: Auth) {
        if let Some(alloc) = self.allocations.get(&ft).filter(|a| a.expires > now) {
            if alloc.allocate_tid == msg.transaction_id {
                // A retransmission: the same answer again.
                let (m, key) = (allocate_success(ft, alloc), alloc.key.clone());
                return self.reply(ft, m, Some(&key));
            }
            return self.error(ft, msg, code::ALLOCATION_MISMATCH, &auth.key);
        }
        match msg.requested_transport {
            None => return self.error(ft, msg, code::BAD_REQUEST, &auth.key),
            Some(TRANSPORT_UDP) => {}
            Some(_) => return self.error(ft, msg, code::UNSUPPORTED_TRANSPORT, &auth.key),
        }
        // §7.2 item 7: without REQUESTED-ADDRESS-FAMILY the client gets IPv4 or a 440.
        let wanted = msg.requested_address_family.unwrap_or(AddressFamily::V4);
        if wanted != AddressFamily::of(self.config.relay_ip) {
            return self.error(ft, msg, code::ADDRESS_FAMILY_NOT_SUPPORTED, &auth.key);
        }
        // Quotas (RFC 8656 §7.2 item 10: 486, counted per username as it advises; 508 when the
        // server is full).
        let limits = &self.config.limits;
        let mine = self.per_user.get(&auth.user).copied().unwrap_or(0);
        if mine >= limits.max_allocations_per_user {
            return self.error(ft, msg, code::ALLOCATION_QUOTA_REACHED, &auth.key);
        }
        if self.allocations.len() >= limits.max_allocations {
            // The request is authenticated here, so a 300 may go, signed (RFC 8489 §14.8).
            // The alternate is a UDP address, and a redirected client keeps the transport of
            // its request (RFC 8489 §10): a client over TCP or TLS would knock on a UDP port,
            // so it gets the 508 instead.
            let alternate = self
                .alternate
                .filter(|_| ft.transport == ClientTransport::Udp);
            if let Some(alternate) = alternate {
                self.stats.redirected += 1;
                let mut m = TurnMessage::error_response(msg, code::TRY_ALTERNATE);
                m.alternate_server = Some(alternate);
                return self.reply(ft, m, Some(&auth.key));
            }
            return self.error(ft, msg, code::INSUFFICIENT_CAPACITY, &auth.key);
        }
        // §7.2 item 8: EVEN-PORT asks for an even port; with R set it also asks to reserve the
        // next one, which this server does not do (no RESERVATION-TOKEN), so it cannot satisfy it.
        if msg.even_port == Some(true) {
            return self.error(ft, msg, code::INSUFFICIENT_CAPACITY, &auth.key);
        }
        let Some(port) = self.pick_port(msg.even_port.is_some()) else {
            return self.error(ft, msg, code::INSUFFICIENT_CAPACITY, &auth.key);
        };
        // A stale allocation on this 5-tuple whose timer has not fired yet goes first.
        self.release(ft, Release::Expired);
        let relayed = SocketAddr::new(self.config.relay_ip, port);
        let granted = self.lifetime(msg.lifetime);
        let limits = &self.config.limits;
        let alloc = Allocation {
            relayed,
            username: auth.username,
            user: auth.user.clone(),
            key: auth.key.clone(),
            expires: now + Duration::from_secs(granted.into()),
            allocate_tid: msg.transaction_id,
            granted,
            even: msg.even_port.is_some(),
            bind_failures: 0,
            permissions: BTreeMap::new(),
            channels: BTreeMap::new(),
            channel_by_peer: BTreeMap::new(),
            bucket: TokenBucket::new(now, limits.bandwidth_bytes_per_s, limits.burst_bytes),
        };
        let answer = allocate_success(ft, &alloc);
        self.allocations.insert(ft, alloc);
        self.by_relay.insert(relayed, ft);
        self.sockets.push_back(SocketRequest::Bind(relayed));
        *self.per_user.entry(auth.user.clone()).or_default() += 1;
        self.events.push_back(Event::Allocated {
            client: ft.client,
            relayed,
            user: auth.user,
        });
        let queued = self.out.len() + self.stream_out.len();
        self.reply(ft, answer, Some(&auth.key));
        if self.out.len() + self.stream_out.len() > queued {
            if let Some(out) = self.last_out(ft) {
                out.allocated = Some(relayed);
            }
        }
    }

    /// The driver could not bind `relayed`. While the Allocate's answer has not left, the
    /// allocation moves to another port (up to [`MAX_BIND_FAILURES`] tries) and the answer and
    /// the `Allocated` event follow it; past the tries, or with no port left, the allocation is
    /// dropped as if it had never been made and the answer becomes a 508 (RFC 8656 §7.2: the
    /// server could not allocate). A port that failed is not tried again for a while
    /// ([`UNBINDABLE_MEMORY`] of them are remembered). An allocation whose answer has already
    /// left is kept: the driver binds a source on demand when it sends from it.
    fn relay_bind_failed(&mut self, relayed: SocketAddr) {
        self.stats.relay_bind_errors += 1;
        if self.unbindable.len() >= UNBINDABLE_MEMORY {
            self.unbindable.pop_front();
        }
        self.unbindable.push_back(relayed);
        let Some(&ft) = self.by_relay.get(&relayed) else {
            return;
        };
        let queue = match ft.transport {
            ClientTransport::Udp => &self.out,
            ClientTransport::Tcp => &self.stream_out,
        };
        let Some(index) = queue.iter().position(|o| o.allocated == Some(relayed)) else {
            return;
        };
        let Some(alloc) = self.allocations.get_mut(&ft) else {
            return;
        };
        alloc.bind_failures = alloc.bind_failures.saturating_add(1);
        let (tries_left, even) = (alloc.bind_failures < MAX_BIND_FAILURES, alloc.even);
        self.by_relay.remove(&relayed);
        let moved = if tries_left {
            self.pick_port(even)
        } else {
            None
        };
        let Some(alloc) = self.allocations.get_mut(&ft) else {
            return;
        };
        let key = alloc.key.clone();
        let answer = match moved {
            Some(port) => {
                let new = SocketAddr::new(self.config.relay_ip, port);
                alloc.relayed = new;
                let answer = allocate_success(ft, alloc);
                self.by_relay.insert(new, ft);
                self.sockets.push_back(SocketRequest::Bind(new));
                for event in &mut self.events {
                    if let Event::Allocated { relayed: r, .. } = event {
                        if *r == relayed {
                            *r = new;
                        }
                    }
                }
                self.queue_mut(ft.transport)[index].allocated = Some(new);
                answer
            }
            None => {
                let tid = alloc.allocate_tid;
                let user = alloc.user.clone();
                self.allocations.remove(&ft);
                if let Some(n) = self.per_user.get_mut(&user) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.per_user.remove(&user);
                    }
                }
                self.events
                    .retain(|e| !matches!(e, Event::Allocated { relayed: r, .. } if *r == relayed));
                self.queue_mut(ft.transport)[index].allocated = None;
                let request = TurnMessage::new(Class::Request, method::ALLOCATE, tid);
                TurnMessage::error_response(&request, code::INSUFFICIENT_CAPACITY)
            }
        };
        let mut answer = answer;
        answer.software.clone_from(&self.config.software);
        // Encoding fails only for values this machine chose; the old answer stays then.
        if let Ok(bytes) = answer.to_bytes(Some(&key)) {
            self.queue_mut(ft.transport)[index].bytes = bytes;
        }
        self.update_deadline();
    }

    /// A free relay port (an even one if `even`), random in the range: a few random tries, then
    /// a scan from a random start.
    fn pick_port(&mut self, even: bool) -> Option<u16> {
        let range = self.config.relay_ports.clone();
        let ip = self.config.relay_ip;
        let listen = self.config.listen;
        let free = |this: &Self, port: u16| {
            let a = SocketAddr::new(ip, port);
            (!even || port % 2 == 0)
                && a != listen
                && !this.by_relay.contains_key(&a)
                && !this.unbindable.contains(&a)
        };
        for _ in 0..8 {
            let port = self.rng.random_range(range.clone());
            if free(self, port) {
                return Some(port);
            }
        }
        let start = self.rng.random_range(range.clone());
        (start..=*range.end())
            .chain(*range.start()..start)
            .find(|&p| free(self, p))
    }

    fn release(&mut self, ft: FiveTuple, reason: Release) {
        let Some(alloc) = self.allocations.remove(&ft) else {
            return;
        };
        self.by_relay.remove(&alloc.relayed);
        self.sockets.push_back(SocketRequest::Unbind(alloc.relayed));
        if let Some(n) = self.per_user.get_mut(&alloc.user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(&alloc.user);
            }
        }
        self.events.push_back(Event::Released {
            client: ft.client,
            relayed: alloc.relayed,
            reason,
        });
    }

    /// RFC 8656 §8.2.
    fn refresh(&mut self, now: Instant, ft: FiveTuple, msg: &TurnMessage, key: &IntegrityKey) {
        let mut m = TurnMessage::new(Class::SuccessResponse, method::REFRESH, msg.transaction_id);
        if msg.lifetime == Some(0) {
            self.release(ft, Release::Deallocated);
            m.lifetime = Some(0);
        } else {
            let granted = self.lifetime(msg.lifetime);
            if let Some(alloc) = self.allocations.get_mut(&ft) {
                alloc.expires = now + Duration::from_secs(granted.into());
            }
            m.lifetime = Some(granted);
        }
        self.reply(ft, m, Some(key));
    }

    /// Installs or refreshes a permission for `ip` (RFC 8656 §9); `false` when over quota.
    fn permit(&mut self, now: Instant, ft: FiveTuple, ip: IpAddr) -> bool {
        let max = self.config.limits.max_permissions;
        let Some(alloc) = self.allocations.get_mut(&ft) else {
            return false;
        };
        if !alloc.permissions.contains_key(&ip) && alloc.permissions.len() >= max {
            return false;
        }
        alloc.permissions.insert(ip, now + PERMISSION_LIFETIME);
        true
    }

    /// RFC 8656 §10.2.
    fn create_permission(
        &mut self,
        now: Instant,
        ft: FiveTuple,
        msg: &TurnMessage,
        key: &IntegrityKey,
    ) {
        if msg.xor_peer_addresses.is_empty() {
            return self.error(ft, msg, code::BAD_REQUEST, key);
        }
        let family = AddressFamily::of(self.config.relay_ip);
        if msg
            .xor_peer_addresses
            .iter()
            .any(|p| AddressFamily::of(p.ip()) != family)
        {
            return self.error(ft, msg, code::PEER_ADDRESS_FAMILY_MISMATCH, key);
        }
        // §9: the server may refuse a peer address it does not want to relay to (403); all or
        // nothing, like the quota. A permission names an IP only (§9), so the own-address check
        // on ports waits for ChannelBind and Send.
        if msg
            .xor_peer_addresses
            .iter()
            .any(|p| self.config.peers.check_ip(p.ip()).is_some())
        {
            return self.refuse_peer(ft, msg, key);
        }
        // All or nothing: the quota is checked for every address before any is installed, so a
        // 508 leaves no permission behind.
        let max = self.config.limits.max_permissions;
        if let Some(alloc) = self.allocations.get(&ft) {
            let mut new: Vec<IpAddr> = msg
                .xor_peer_addresses
                .iter()
                .map(|p| p.ip())
                .filter(|ip| !alloc.permissions.contains_key(ip))
                .collect();
            new.sort();
            new.dedup();
            if alloc.permissions.len() + new.len() > max {
                return self.error(ft, msg, code::INSUFFICIENT_CAPACITY, key);
            }
        }
        for peer in msg.xor_peer_addresses.clone() {
            self.permit(now, ft, peer.ip());
        }
        let m = TurnMessage::new(
            Class::SuccessResponse,
            method::CREATE_PERMISSION,
            msg.transaction_id,
        );
        self.reply(ft, m, Some(key));
    }

    /// RFC 8656 §12.2.
    fn channel_bind(&mut self, now: Instant, ft: FiveTuple, msg: &TurnMessage, key: &IntegrityKey) {
        let (Some(number), [peer]) = (msg.channel_number, msg.xor_peer_addresses.as_slice()) else {
            return self.error(ft, msg, code::BAD_REQUEST, key);
        };
        let peer = *peer;
        if !ChannelData::is_valid_channel(number) {
            return self.error(ft, msg, code::BAD_REQUEST, key);
        }
        // Port 0 cannot be sent to; every datagram on the channel would be a send error
        // (RFC 8656 §12.2 lets the server reject the request with 400).
        if peer.port() == 0 {
            return self.error(ft, msg, code::BAD_REQUEST, key);
        }
        if AddressFamily::of(peer.ip()) != AddressFamily::of(self.config.relay_ip) {
            return self.error(ft, msg, code::PEER_ADDRESS_FAMILY_MISMATCH, key);
        }
        if self.config.peers.check(peer, self.config.listen).is_some() {
            return self.refuse_peer(ft, msg, key);
        }
        let max_channels = self.config.limits.max_channels;
        let max_perms = self.config.limits.max_permissions;
        let Some(alloc) = self.allocations.get_mut(&ft) else {
            return self.error(ft, msg, code::ALLOCATION_MISMATCH, key);
        };
        // §12.2: the number must not be bound to another peer, nor the peer to another number.
        if alloc.channels.get(&number).is_some_and(|c| c.peer != peer)
            || alloc
                .channel_by_peer
                .get(&peer)
                .is_some_and(|&n| n != number)
        {
            return self.error(ft, msg, code::BAD_REQUEST, key);
        }
        let new_channel = !alloc.channels.contains_key(&number);
        let new_perm = !alloc.permissions.contains_key(&peer.ip());
        if (new_channel && alloc.channels.len() >= max_channels)
            || (new_perm && alloc.permissions.len() >= max_perms)
        {
            return self.error(ft, msg, code::INSUFFICIENT_CAPACITY, key);
        }
        alloc.channels.insert(
            number,
            Channel {
                peer,
                expires: now + CHANNEL_LIFETIME,
            },
        );
        alloc.channel_by_peer.insert(peer, number);
        // §12.2: binding a channel installs or refreshes the permission too.
        alloc
            .permissions
            .insert(peer.ip(), now + PERMISSION_LIFETIME);
        let m = TurnMessage::new(
            Class::SuccessResponse,
            method::CHANNEL_BIND,
            msg.transaction_id,
        );
        self.reply(ft, m, Some(key));
    }

    /// RFC 8656 §11.2: a Send indication from the client.
    /// An indication with an attribute it must understand and does not (DONT-FRAGMENT, which
    /// this server cannot honour) is dropped silently (RFC 8489 §6.3.2).
    fn send_indication(&mut self, now: Instant, ft: FiveTuple, msg: &TurnMessage) {
        if !msg.unknown_required.is_empty() {
            self.stats.dropped_malformed += 1;
            return;
        }
        let (Some(&peer), Some(data)) = (msg.xor_peer_addresses.first(), &msg.data) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        // A forbidden IP never gets a permission, but the own-address check is per port; and a
        // separate counter tells an operator who is probing.
        if self.config.peers.check(peer, self.config.listen).is_some() {
            self.stats.dropped_forbidden_peer += 1;
            return;
        }
        self.relay_out(now, ft, peer, data);
    }

    /// RFC 8656 §12.6: ChannelData from the client.
    fn channel_data(&mut self, now: Instant, ft: FiveTuple, bytes: &[u8]) {
        let Ok(cd) = ChannelData::decode(bytes) else {
            self.stats.dropped_malformed += 1;
            return;
        };
        let peer = self
            .allocations
            .get(&ft)
            .and_then(|a| a.channels.get(&cd.channel))
            .filter(|c| c.expires > now)
            .map(|c| c.peer);
        let Some(peer) = peer else {
            self.stats.dropped_no_allocation += 1;
            return;
        };
        self.relay_out(now, ft, peer, cd.data);
    }

    /// Client → peer, from the relayed address, if permitted and within quota.
    fn relay_out(&mut self, now: Instant, ft: FiveTuple, peer: SocketAddr, data: &[u8]) {
        let Some(alloc) = self.allocations.get_mut(&ft).filter(|a| a.expires > now) else {
            self.stats.dropped_no_allocation += 1;
            return;
        };
        if !alloc.has_permission(now, peer.ip()) {
            self.stats.dropped_no_permission += 1;
            return;
        }
        if !alloc.bucket.take(now, data.len()) {
            self.stats.dropped_bandwidth += 1;
            return;
        }
        let from = alloc.relayed;
        self.stats.relayed_to_peer += 1;
        self.send(peer, from, data.to_vec());
    }

    /// Peer → client (RFC 8656 §11.3 and §12.7): ChannelData when a channel is bound to the
    /// peer, else a Data indication.
    fn on_peer_datagram(&mut self, now: Instant, ft: FiveTuple, p: Receive<'_>) {
        let Some(alloc) = self.allocations.get_mut(&ft).filter(|a| a.expires > now) else {
            self.stats.dropped_no_allocation += 1;
            return;
        };
        if !alloc.has_permission(now, p.source.ip()) {
            self.stats.dropped_no_permission += 1;
            return;
        }
        if !alloc.bucket.take(now, p.payload.len()) {
            self.stats.dropped_bandwidth += 1;
            return;
        }
        let channel = alloc
            .channel_by_peer
            .get(&p.source)
            .copied()
            .filter(|n| alloc.channels.get(n).is_some_and(|c| c.expires > now));
        // RFC 8656 §12.5: over TCP, ChannelData is padded to a multiple of 4 (the stream has
        // no other way to keep the next message aligned); over UDP padding is optional and left
        // out.
        let pad = ft.transport == ClientTransport::Tcp;
        let bytes = match channel {
            Some(channel) => {
                let cd = ChannelData {
                    channel,
                    data: p.payload,
                };
                let mut buf = vec![0u8; ChannelData::encoded_len(p.payload.len(), pad)];
                cd.encode(pad, &mut buf).map(|n| {
                    buf.truncate(n);
                    buf
                })
            }
            None => {
                let mut tid = [0u8; 12];
                self.rng.fill_bytes(&mut tid);
                let mut m =
                    TurnMessage::new(Class::Indication, method::DATA, TransactionId::new(tid));
                m.xor_peer_addresses = vec![p.source];
                m.data = Some(p.payload.to_vec());
                m.to_bytes(None).ok()
            }
        };
        let Some(bytes) = bytes else {
            // Too long to wrap (a 65,507-byte datagram leaves no room for the header).
            self.stats.dropped_malformed += 1;
            return;
        };
        self.stats.relayed_to_client += 1;
        self.send_client(ft, bytes);
    }
}

impl SansIo for Server {
    type Event = Event;

    /// Datagrams to the listen address or to a live relayed address.
    fn accepts(&self, packet: &Receive<'_>) -> bool {
        packet.local == self.config.listen || self.by_relay.contains_key(&packet.local)
    }

    /// Expired state not yet swept by `handle_timeout` is never used: every lookup checks its
    /// own expiry.
    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        if packet.local == self.config.listen {
            self.on_client_datagram(now, packet);
        } else if let Some(&ft) = self.by_relay.get(&packet.local) {
            self.on_peer_datagram(now, ft, packet);
        } else {
            self.stats.dropped_no_allocation += 1;
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.deadline.is_none_or(|d| d > now) {
            return;
        }
        let expired: Vec<FiveTuple> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(&ft, _)| ft)
            .collect();
        for ft in expired {
            self.release(ft, Release::Expired);
        }
        for alloc in self.allocations.values_mut() {
            alloc.expire_children(now);
        }
        self.update_deadline();
    }

    /// A bind for each new relayed address, an unbind for each released one, in order.
    fn poll_socket_request(&mut self) -> Option<SocketRequest> {
        self.sockets.pop_front()
    }

    /// See `relay_bind_failed`: the allocation moves to another port before its answer leaves.
    fn handle_bind_error(&mut self, _now: Instant, addr: SocketAddr) {
        self.relay_bind_failed(addr);
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        while let Some(out) = self.out.pop_front() {
            let Some(dst) = buf.get_mut(..out.bytes.len()) else {
                self.stats.dropped_buffer += 1;
                continue;
            };
            dst.copy_from_slice(&out.bytes);
            return Some(Transmit::new(out.to, out.bytes.len()).from_source(out.from));
        }
        None
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The next expiry of an allocation, permission or channel.
    fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
    }
}

#[cfg(test)]
mod tests;
