//! What a [`Node`](super::Node) is configured with.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use fog_ice::strategy::StrategyConfig;
use fog_signal::KeyPair;
use fog_signal::msg::Transport;

/// Everything a [`Node`](super::Node) needs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct NodeConfig {
    /// The node's identity.
    pub key: KeyPair,
    /// The signaling server's name (signed into authentication).
    pub realm: String,
    /// An alias to claim.
    pub alias: Option<String>,
    /// The signaling server's key to insist on (pinning): the node refuses to authenticate to
    /// a server that proves another key. Default none (any key; the server is trusted for
    /// delivery only either way, since sessions are signed end to end).
    pub server_key: Option<fog_signal::PeerId>,
    /// The RFC 5780 STUN server (primary address).
    pub stun: SocketAddr,
    /// The main UDP socket: checks and the path leave from it.
    pub base: SocketAddr,
    /// How punching is chosen.
    pub strategy: StrategyConfig,
    /// The transports this node runs: a caller asking for another is refused with
    /// [`REFUSED_TRANSPORT`](super::REFUSED_TRANSPORT), and `connect_with` one refuses at
    /// once (default: datagrams, KCP, QUIC, uTP and SCTP, the ones there are; others are not
    /// accepted even if listed).
    pub transports: Vec<Transport>,
    /// Seeds the node's cryptographically secure generator (ChaCha20), from which every secret
    /// (check credentials, session keys) and every random choice (transaction IDs, ports,
    /// tie-breakers) is drawn; no machine's randomness reveals another's. A driver on real
    /// networks supplies 256 bits from the OS (fog-runtime does, whatever is given here); the
    /// simulator a fixed seed, so that a run is a trace.
    pub seed: Seed,
    /// Discovery's port samples (default 4: enough to read a sequential pattern).
    pub port_samples: u16,
    /// Test hairpinning during discovery (default off: it does not change punching).
    pub hairpinning: bool,
    /// What nodes found on networks before ([`Event::NatKnown`](super::Event::NatKnown), kept
    /// by the driver, one per network a host has been on): when one names this node's STUN
    /// server and base IP and test I sees its public IP, the node is ready with it at once,
    /// without waiting for the rest of discovery (which runs on, and corrects it with
    /// [`Event::NatUpdated`](super::Event::NatUpdated) if the network changed). Default none.
    pub known_nats: Vec<KnownNat>,
    /// The gap between two new discovery transactions (default 10 ms). RFC 5780 §5 asks for
    /// at most ten a second (100 ms); a node deviates because its whole discovery is a burst
    /// of about fifteen small requests once per start, to a server that limits each source
    /// anyway (fogd: 20 a second, bursts of 40), and at 100 ms the pacing alone held the first
    /// usable path back by about 200 ms on loopback.
    pub discovery_pacing: Duration,
    /// How long discovery's first question (test I) may go unanswered before the node takes
    /// its UDP for blocked and is ready on that assumption, the most restrictive one: its
    /// connections go through the signaling server until an answer comes, which is announced
    /// as [`Event::NatUpdated`](super::Event::NatUpdated). Default 500 ms: test I then went
    /// unanswered four times (two transactions, RTO 250 ms) where a server of fogd's answers
    /// within one round trip, and waiting for its silence (4.75 s) held a UDP-blocked node's
    /// first path back by that much. `None` waits for the silence.
    pub assume_udp_blocked_after: Option<Duration>,
    /// The TURN server to allocate on, with credentials the signaling server hands out
    /// (`None`: no relay).
    pub turn: Option<SocketAddr>,
    /// Direct paths allowed (default). When off, the node describes only its relayed address,
    /// so the peer never learns its own, and every connection goes through a relay.
    pub direct: bool,
    /// Further local addresses to use, each a host candidate on its own socket at the base's
    /// port: the machine's other interfaces, IPv6 ones included (a driver gathers them, e.g.
    /// fog-mio's `interfaces`; loopback and link-local addresses are the caller's choice).
    /// Default none. [`Node::set_interfaces`](super::Node::set_interfaces) changes them later.
    pub interfaces: Vec<IpAddr>,
    /// How often the base socket sends a Binding to the STUN server once discovery is done
    /// (default 15 s): it keeps the NAT's mapping to the server, and a changed mapped address
    /// is a new server-reflexive candidate. Below the shortest UDP mapping timeout seen in the
    /// field (RFC 4787 REQ-5 asks for at least 2 minutes, but many NATs keep 30 s).
    pub keepalive: Duration,
    /// Other servers the node may use instead of `stun` and `turn` (further fogd instances,
    /// say). When there are any, the node first measures the RTT to every STUN server, `stun`
    /// first, and uses the nearest for discovery, with the TURN server beside it; the order
    /// given is the preference, which a clearly nearer server overrides
    /// ([`fog_stun::rank`]). Default none.
    pub alternatives: Vec<ServerChoice>,
    /// What happens to an incoming offer (default [`AcceptPolicy::Ask`]: the application
    /// decides on [`Event::Incoming`](super::Event::Incoming)).
    pub accept: AcceptPolicy,
    /// How long a connection may take to get its first path, from `connect` or from the offer's
    /// arrival (an incoming one waiting for the application's decision included); then it
    /// fails with [`FailReason::TimedOut`](super::FailReason::TimedOut). Default 30 s: the
    /// longest punching plan (birthday rounds) is over well before, and the relay is usable
    /// within a few round trips.
    pub connect_timeout: Duration,
    /// A connected connection from whose peer nothing (data, checks, keepalives) arrived for
    /// this long closes with [`CloseReason::IdleTimeout`](super::CloseReason::IdleTimeout).
    /// Default 45 s: above the agent's 30 s consent timeout, so a path that died has had its
    /// chance to move to another one, and above the 30 s keepalive of the relay over
    /// signaling.
    pub idle_timeout: Duration,
    /// The most connections the node holds at once, in every phase (default 4,096). A
    /// `connect` beyond it is refused with [`ConnectError::TooManyConnections`](super::ConnectError),
    /// an incoming offer beyond it is refused to the peer with
    /// [`REFUSED_FULL`](super::REFUSED_FULL).
    pub max_connections: usize,
    /// The most incoming connections waiting for the application's decision or for their
    /// answer to go (default 256): beyond it an offer is refused to the peer with
    /// [`REFUSED_BUSY`](super::REFUSED_BUSY), so that callers cannot fill the node with
    /// offers it never decided on.
    pub max_pending_incoming: usize,
    /// Datagrams the node's agents may send, across all sessions, to an IP that has not
    /// answered a check within ten minutes (checks, birthday probes, holds); beyond it they
    /// are withheld and counted in [`Counters::probes_withheld`](super::Counters::probes_withheld).
    /// A peer's candidates are its claims, so this is what bounds the traffic a hostile peer
    /// can aim at a third party's address (see the `ledger` module). Default: one birthday
    /// round's probes ([`StrategyConfig::budget`]), two datagrams each (each probe opens a new
    /// flow, so a low-TTL copy that opens our NAT goes just before it), plus
    /// [`CHECK_ALLOWANCE`]: 2,560.
    pub probe_budget: u32,
    /// The default gateway to ask for a port mapping of the base socket (PCP, then NAT-PMP,
    /// then UPnP IGD; fog-portmap), when the base has an IPv4 address of its own (not
    /// loopback). A mapping
    /// is offered as a candidate of its own kind (`mapped`) once a probe from the STUN
    /// server's other address came through it, and makes the node directly reachable for
    /// any peer (the pairing strategy counts it as open); it is renewed while the node runs,
    /// withdrawn when a renewal fails, and deleted by
    /// [`Node::close_port_mapping`](super::Node::close_port_mapping). UPnP needs the driver
    /// to carry TCP ([`Node::poll_tcp`](super::Node::poll_tcp)). Default none; fog-runtime
    /// fills it from the OS's default route.
    pub port_mapping: Option<std::net::Ipv4Addr>,
}

/// What [`NodeConfig::probe_budget`] allows beyond the birthday round's probes: the ordinary
/// checks of a round (retransmitted to each of the peer's candidates) and of the rounds after
/// it, while the relay carries the connection.
pub const CHECK_ALLOWANCE: u32 = 512;

/// What the node does with an incoming offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AcceptPolicy {
    /// Report [`Event::Incoming`](super::Event::Incoming) and wait for
    /// [`Node::accept`](super::Node::accept) or [`Node::refuse`](super::Node::refuse).
    #[default]
    Ask,
    /// Accept every offer at once ([`Event::Incoming`](super::Event::Incoming) still tells who
    /// and for which service); what `fogconnect serve` does.
    All,
}

/// A STUN server, and the TURN server that goes with it (see [`NodeConfig::alternatives`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerChoice {
    /// The RFC 5780 STUN server (primary address).
    pub stun: SocketAddr,
    /// The TURN server beside it, if any.
    pub turn: Option<SocketAddr>,
}

/// 256 bits that seed a node's generator (see [`NodeConfig::seed`]). Never printed.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Seed(pub [u8; 32]);

impl std::fmt::Debug for Seed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Seed(..)")
    }
}

impl From<[u8; 32]> for Seed {
    fn from(bytes: [u8; 32]) -> Self {
        Seed(bytes)
    }
}

impl From<u64> for Seed {
    /// A seed for tests and the simulator, spread over 256 bits: it has only 64 bits of
    /// entropy, so never use it where an attacker could guess it.
    fn from(n: u64) -> Self {
        let mut bytes = [0u8; 32];
        let mut x = n;
        for chunk in bytes.chunks_exact_mut(8) {
            // SplitMix64 (Steele, Lea, Flood 2014): distinct words from one counter.
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            chunk.copy_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        Seed(bytes)
    }
}

impl NodeConfig {
    /// A configuration with the defaults above.
    pub fn new(
        key: KeyPair,
        realm: impl Into<String>,
        stun: SocketAddr,
        base: SocketAddr,
        seed: impl Into<Seed>,
    ) -> Self {
        NodeConfig {
            key,
            realm: realm.into(),
            alias: None,
            server_key: None,
            stun,
            base,
            strategy: StrategyConfig::default(),
            transports: vec![
                Transport::Datagram,
                Transport::Kcp,
                Transport::Quic,
                Transport::Utp,
                Transport::Rtc,
                Transport::Sctp,
            ],
            seed: seed.into(),
            port_samples: 4,
            hairpinning: false,
            discovery_pacing: Duration::from_millis(10),
            assume_udp_blocked_after: Some(Duration::from_millis(500)),
            known_nats: Vec::new(),
            turn: None,
            direct: true,
            interfaces: Vec::new(),
            keepalive: Duration::from_secs(15),
            alternatives: Vec::new(),
            accept: AcceptPolicy::Ask,
            connect_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(45),
            max_connections: 4_096,
            max_pending_incoming: 256,
            probe_budget: 2 * StrategyConfig::default().budget.probes + CHECK_ALLOWANCE,
            port_mapping: None,
        }
    }
}

/// A network's NAT behaviour as a node found it, to remember across starts
/// ([`NodeConfig::known_nats`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownNat {
    /// The STUN server it was measured against.
    pub stun: SocketAddr,
    /// The node's base IP (its local address toward the server).
    pub local: IpAddr,
    /// The public IP the server saw.
    pub public: IpAddr,
    /// What discovery found, every test complete.
    pub behaviour: fog_core::nat::Behaviour,
}
