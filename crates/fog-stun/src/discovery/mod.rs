//! NAT behaviour discovery: the RFC 5780 §4 procedure with real STUN, plus the port allocation
//! pattern that punching needs and the RFC leaves out.
//!
//! [`Discovery`] is a [`SansIo`] machine. It owns a handful of local ports (named in each
//! [`Transmit::source`] with the configured, usually unspecified, IP: fog-mio binds them on
//! demand, the simulator accepts any), asks the server at A1:P1 and, once the first answer names
//! it, the alternate address A2:P2, and ends with [`Event::Done`] carrying a [`Report`].
//!
//! # The procedure
//!
//! Let M, F, X, Y and S0, S1, … be local ports (see [`DiscoveryConfig::local_ports`]), X1 the
//! mapped address of test I and A2:P2 the server's OTHER-ADDRESS (or the RFC 3489
//! CHANGED-ADDRESS classic servers such as `stund` send).
//!
//! | step | from | to | asks | reading |
//! |---|---|---|---|---|
//! | test I (§4.2, §4.3) | M | A1:P1 | | silence: UDP blocked, stop; X1 = M's own address: no NAT |
//! | mapping II (§4.3) | M | A2:P1 | | X2 = X1: endpoint-independent mapping |
//! | mapping III (§4.3) | M | A2:P2 | | X3 = X2: address-dependent, else address-and-port-dependent |
//! | filtering II (§4.4) | F | A1:P1 | CHANGE-REQUEST IP+port | an answer from A2:P2: endpoint-independent filtering |
//! | filtering III (§4.4) | F | A1:P1 | CHANGE-REQUEST port | an answer from A1:P2: address-dependent, none: address-and-port-dependent |
//! | hairpinning (§3.4) | M | X1 | | our own request arrives on M: the NAT hairpins |
//! | lifetime control (§4.6) | X | A1:P1 | | X's mapped port Pp |
//! | port samples | S0, S1, … | A1:P1 | | external = local: preserved; constant step: sequential; else random |
//! | lifetime probe (§4.6), after the idle time | Y | A1:P1 | RESPONSE-PORT Pp | the answer arrives on X: the binding lived |
//!
//! Test I runs alone. The mapping, filtering, hairpinning and lifetime-control questions then
//! run together (RFC 5780 §4.5 allows combining and parallelising them: mapping III is asked
//! with II and read only when X2 ≠ X1, filtering III with II and read only when II is silent;
//! filtering uses the fresh port F because
//! the mapping tests leave permissions in the NAT, §4.4, and all filtering requests go to A1:P1,
//! so none opens the door another one tests). Port samples follow one at a time, once every
//! other question has sent its first request (retransmissions and further transactions reuse
//! their question's port and destination), so that no other new binding lands between two
//! samples on a NAT that assigns ports sequentially; each sample is kept with its local port, so
//! a lost sample leaves a gap rather than shifting the others. The lifetime probe comes last.
//!
//! # Fast start: the provisional report
//!
//! A filtering test can only conclude "filtered" when all its retransmissions went unanswered
//! (4.75 s with the defaults), and most home NATs filter. A caller that only needs enough to
//! plan a connection gets [`Event::Provisional`] long before: once the mapping is known, the
//! open questions had twice test I's round trip to be answered, and, for a mapping that is
//! not endpoint-independent, the port samples are in. Tests still running are
//! [`Untested::Pending`], and the behaviour assumes the most restrictive result for them (as
//! [`Report`] does for any test without a result). [`Event::Done`] follows with the rest.
//! With a [`Remembered`] behaviour whose public IP test I confirms, the provisional report
//! comes right after test I and carries the remembered behaviour. With
//! [`DiscoveryConfig::assume_blocked_after`], test I unanswered that long gives a provisional
//! report of [`Behaviour::UdpBlocked`] (test I [`Untested::Pending`]): a node whose UDP is
//! blocked then need not wait 4.75 s to go on over TCP, and an answer after it is reported
//! as usual, so the assumption costs a caller on a lossy path only an update.
//! Without a NAT only filtering (firewall or open) and the lifetime are tested; without
//! OTHER-ADDRESS only the port pattern, hairpinning and the lifetime.
//!
//! # Reliability
//!
//! A test whose silence is a finding (UDP blocked, filtering, hairpinning) must not read loss
//! as behaviour. Each question is asked with up to
//! [`transactions_per_test`](DiscoveryConfig::transactions_per_test) transactions (default 2),
//! each retransmitted per RFC 5389 §7.2.1; a further transaction starts only while the question
//! is unanswered, half an RTO after the previous one so that their retransmissions interleave
//! (RFC 5780 §5), and silence counts only when all of them time out. With the defaults (RTO
//! 250 ms, Rc 5, two transactions) that is ten requests; at 10 % loss each way a question is
//! misread with probability 0.19¹⁰ ≈ 6·10⁻⁸, where one transaction alone would misread
//! 2.5·10⁻⁴ of them. On a path that answers within half an RTO the second transaction never
//! starts. New transactions are paced at most ten per second (RFC 5780 §5).
//!
//! Answers are accepted only with the transaction ID of an outstanding question, on the local
//! port it was sent from, from the address it asked for (for a CHANGE-REQUEST, the changed
//! address; an error response may also come from where the request went). Anything else is
//! counted in [`DiscoveryStats`] and dropped, and no input panics.
//!
//! # Deviations, and why
//!
//! - The initial RTO defaults to 250 ms, below RFC 5389 §7.2.1's "SHOULD be greater than
//!   500 ms": the section exempts cases where another mechanism bounds the load, and discovery
//!   sends a few dozen small requests at most, paced per RFC 5780 §5. Rm is 4, not 16: the
//!   final wait only has to outlast one round trip.
//! - Hairpinning is tested from the port that owns X1, not "from a different port" as RFC
//!   5780 §3.4 describes: the hairpinned request then enters through a binding that has itself
//!   sent to X1, so a filtering NAT nested inside the hairpinning one (a home router behind a
//!   carrier-grade NAT) lets it in, and the test measures hairpinning alone rather than
//!   hairpinning combined with the inner NAT's filtering. The request's source on arrival is
//!   not checked: an address-and-port-dependent NAT hairpins it from a new mapping.
//! - The no-NAT check needs the local IP. When the driver binds a wildcard,
//!   [`Receive::local`] does not carry it; set [`DiscoveryConfig::local_ip`] or
//!   [`DiscoveryConfig::own_addresses`] (for example the address a UDP socket connected to the
//!   server reports), or a host without a NAT is reported as behind one.
//!
//! # Driving it
//!
//! ```no_run
//! use std::time::Instant;
//! use fog_core::SansIo;
//! use fog_stun::discovery::{Discovery, DiscoveryConfig, Event};
//!
//! let config = DiscoveryConfig::new("198.51.100.1:3478".parse()?, 7);
//! // A driver may bind these up front; fog-mio also binds them on first use.
//! let _ports = config.local_addrs();
//! let mut discovery = Discovery::new(config);
//! let mut buf = vec![0u8; 65_535];
//! let now = Instant::now(); // the driver's clock
//! discovery.start(now);
//! while let Some(transmit) = discovery.poll_transmit(now, &mut buf) {
//!     // send buf[..transmit.len] from transmit.source to transmit.destination
//! #   let _ = transmit;
//! }
//! while let Some(event) = discovery.poll_event() {
//!     if let Event::Done(report) = event {
//!         println!("{} ({})", report.behaviour, report.classic_name);
//!     }
//! }
//! let _wake_at = discovery.poll_timeout();
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod report;

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::nat::{Behaviour, Filtering, Mapping, PortPattern};
use fog_core::{Protocol, Receive, SansIo, Transmit, classify};
use rand::{Rng as _, RngExt as _, SeedableRng as _};
use rand_chacha::ChaCha8Rng;

use crate::transaction::{Outcome, RetransmitConfig, Transactions};
use crate::wire::{BindingRequest, BindingResponse, Class, Cookie, Message, Method, TransactionId};
pub use report::{DiscoveryStats, Lifetime, PortSample, Report, Test, Untested};

/// Discovery's retransmission defaults: RTO 250 ms, Rc 5, Rm 4. A transaction without an answer
/// times out 4.75 s after its first request (see the [module docs](self) for why these differ
/// from RFC 5389 §7.2.1's).
pub const DEFAULT_RETRANSMIT: RetransmitConfig = RetransmitConfig {
    initial_rto: Duration::from_millis(250),
    max_requests: 5,
    final_wait_rtos: 4,
};

/// Transactions per question: a second one starts only while the first is unanswered.
pub const DEFAULT_TRANSACTIONS_PER_TEST: u32 = 2;
/// Most transactions per question [`Discovery::new`] accepts.
pub const MAX_TRANSACTIONS_PER_TEST: u32 = 8;

/// The gap between two new transactions: "SHOULD NOT generate more than ten new STUN
/// transactions per second" (RFC 5780 §5).
pub const DEFAULT_PACING: Duration = Duration::from_millis(100);

/// Fresh local ports whose mappings give the port pattern.
pub const DEFAULT_PORT_SAMPLES: u16 = 6;
/// Most port samples [`Discovery::new`] accepts.
pub const MAX_PORT_SAMPLES: u16 = 64;

/// The range [`DiscoveryConfig::new`] picks the first local port from: IANA's dynamic ports,
/// one of the two ranges RFC 5780 §4.1 recommends choosing test ports from at random, so that
/// no earlier run left state in the NAT for them.
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;

/// Offsets of the local ports from [`DiscoveryConfig::first_port`].
mod port {
    /// M: test I, mapping tests II and III, hairpinning.
    pub(super) const MAPPING: u16 = 0;
    /// F: filtering tests, fresh (RFC 5780 §4.4).
    pub(super) const FILTERING: u16 = 1;
    /// X: the lifetime test's control binding (RFC 5780 §4.6).
    pub(super) const LIFETIME_CONTROL: u16 = 2;
    /// Y: the lifetime test's probe (RFC 5780 §4.6).
    pub(super) const LIFETIME_PROBE: u16 = 3;
    /// S0: the first port sample. The gap keeps the samples' ports free on a port-preserving
    /// NAT: the bindings made before the samples that cannot keep their port (M's up to four
    /// under address-and-port-dependent mapping: tests I–III and hairpinning; F's; X's) take the
    /// next free ones above theirs, offset 8 at the highest even with parity kept.
    pub(super) const FIRST_SAMPLE: u16 = 16;
}

/// How discovery runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveryConfig {
    /// The server's primary address, A1:P1.
    pub server: SocketAddr,
    /// The local IP requests leave from. Unspecified (the default) lets the driver choose: the
    /// simulator uses the host's address, fog-mio binds the wildcard.
    pub local_ip: IpAddr,
    /// The first local port; the machine uses the ports [`local_ports`](Self::local_ports)
    /// lists, from this one up.
    pub first_port: u16,
    /// The host's own addresses, to recognise X1 as the local address (no NAT) when
    /// [`Receive::local`] is a wildcard and `local_ip` unspecified.
    pub own_addresses: Vec<IpAddr>,
    /// Retransmission of each transaction.
    pub retransmit: RetransmitConfig,
    /// Transactions per question (see the [module docs](self#reliability)).
    pub transactions_per_test: u32,
    /// Least time between two new transactions.
    pub pacing: Duration,
    /// Fresh ports whose mappings give the port pattern; 0 turns the test off, and at least 2 are
    /// needed to read a pattern.
    pub port_samples: u16,
    /// Test hairpinning.
    pub hairpinning: bool,
    /// Test whether a binding lives this long idle (RFC 5780 §4.6). Off by default: the run
    /// takes this much longer.
    pub lifetime: Option<Duration>,
    /// Seeds the transaction IDs (RFC 5389 §6 wants them random; the machine never reads an OS
    /// random source).
    pub seed: u64,
    /// What a run on this network found before (the caller keys it by network: local address,
    /// server). When test I's mapped IP is the remembered public IP, [`Event::Provisional`]
    /// carries the remembered behaviour at once; the tests run on all the same, and
    /// [`Event::Done`] says what they found. A different IP, or a NAT where none was (or the
    /// other way round), discards it.
    pub remembered: Option<Remembered>,
    /// Assume UDP blocked once test I has gone unanswered this long: an
    /// [`Event::Provisional`] with [`Behaviour::UdpBlocked`] goes out then (see
    /// [fast start](self#fast-start-the-provisional-report)). `None` (the default) waits for
    /// test I's silence, 4.75 s with the default retransmission.
    pub assume_blocked_after: Option<Duration>,
}

/// A behaviour found on a network before, for [`DiscoveryConfig::remembered`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remembered {
    /// The public IP test I saw then.
    pub public: IpAddr,
    /// The behaviour found then.
    pub behaviour: Behaviour,
}

impl DiscoveryConfig {
    /// Discovery against `server` with the defaults: local ports from a seeded random first port
    /// in [`DYNAMIC_PORTS`], [`DEFAULT_RETRANSMIT`], two transactions per question, pacing at
    /// 100 ms, six port samples, hairpinning on, lifetime off.
    pub fn new(server: SocketAddr, seed: u64) -> Self {
        let span = port::FIRST_SAMPLE + MAX_PORT_SAMPLES;
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5780_5780_5780_5780);
        let first_port = rng.random_range(*DYNAMIC_PORTS.start()..=DYNAMIC_PORTS.end() - span);
        Self {
            server,
            local_ip: unspecified_like(server.ip()),
            first_port,
            own_addresses: Vec::new(),
            retransmit: DEFAULT_RETRANSMIT,
            transactions_per_test: DEFAULT_TRANSACTIONS_PER_TEST,
            pacing: DEFAULT_PACING,
            port_samples: DEFAULT_PORT_SAMPLES,
            hairpinning: true,
            lifetime: None,
            seed,
            remembered: None,
            assume_blocked_after: None,
        }
    }

    /// Every local port the machine may use, first port first: M, F, X and Y (the lifetime
    /// ports, listed only when the test is on), then the port samples.
    pub fn local_ports(&self) -> Vec<u16> {
        let mut offsets = vec![port::MAPPING, port::FILTERING];
        if self.lifetime.is_some() {
            offsets.extend([port::LIFETIME_CONTROL, port::LIFETIME_PROBE]);
        }
        offsets.extend((0..self.port_samples).map(|i| port::FIRST_SAMPLE + i));
        offsets
            .into_iter()
            .filter_map(|offset| self.first_port.checked_add(offset))
            .collect()
    }

    /// [`local_ports`](Self::local_ports) with [`local_ip`](Self::local_ip): what a driver
    /// binds, if it binds up front.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.local_ports()
            .into_iter()
            .map(|port| SocketAddr::new(self.local_ip, port))
            .collect()
    }

    fn port(&self, offset: u16) -> u16 {
        // `Discovery::new` checked that every offset fits.
        self.first_port.wrapping_add(offset)
    }
}

/// The tests, in the order they finish, for progress displays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Step {
    /// Test I: UDP passes, the mapped address, NAT or not (RFC 5780 §4.2).
    Connectivity,
    /// Mapping tests II and III (RFC 5780 §4.3).
    Mapping,
    /// Filtering tests II and III (RFC 5780 §4.4).
    Filtering,
    /// Hairpinning (RFC 5780 §3.4).
    Hairpinning,
    /// The port samples.
    PortPattern,
    /// The binding lifetime (RFC 5780 §4.6).
    Lifetime,
}

/// What discovery reports.
#[derive(Debug, Clone, PartialEq, Eq)]
// One `Done` per run: boxing the report would only make it harder to match on.
#[allow(clippy::large_enum_variant)]
pub enum Event {
    /// Test I was answered: UDP passes and the server sees the mapping port at `mapped`.
    Mapped {
        /// The mapping port's local address, as far as the machine knows it.
        local: SocketAddr,
        /// X1.
        mapped: SocketAddr,
        /// OTHER-ADDRESS or CHANGED-ADDRESS: `None` means a one-address server, so mapping and
        /// filtering cannot be tested.
        other_address: Option<SocketAddr>,
    },
    /// A test finished: `done` of `total` (the total shrinks when test I shows that some tests
    /// do not apply). None is reported when test I fails: [`Event::Done`] follows at once.
    Progress {
        /// The test.
        step: Step,
        /// Tests finished so far.
        done: u32,
        /// Tests that will run in all.
        total: u32,
    },
    /// A request did not fit the buffer given to `poll_transmit` and was never sent; its test
    /// counts it as unanswered. Drivers give 65,535 bytes, which every request fits.
    BufferTooSmall {
        /// The request's length.
        needed: usize,
    },
    /// What is known so far is enough to plan with, while other tests still run: test I
    /// answered and the mapping behaviour is known, and for a NAT whose mapping is not
    /// endpoint-independent the port pattern too. Tests still running are
    /// [`Untested::Pending`] and the behaviour assumes the worst for them (see [`Report`]), so
    /// a plan made from it does not fail by planning. Comes at most once, before
    /// [`Event::Done`], and only while something is still running (not when everything
    /// settled at once); with [`DiscoveryConfig::assume_blocked_after`], one assuming
    /// [`Behaviour::UdpBlocked`] may come before it, while test I is unanswered.
    Provisional(Report),
    /// Discovery is over; the machine sends nothing more.
    Done(Report),
}

/// A question a test asks: one request, retransmitted, possibly in several transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Ask {
    Connectivity,
    MappingII,
    MappingIII,
    FilteringII,
    FilteringIII,
    Hairpin,
    LifetimeControl,
    LifetimeProbe,
    Sample(u16),
}

/// What settled a question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// A success response with a usable mapped address.
    Mapped {
        mapped: SocketAddr,
        other: Option<SocketAddr>,
        /// The local port it arrived on.
        local_port: u16,
        at: Instant,
    },
    /// Our own hairpinned request arrived.
    Hairpinned,
    /// An error response with this code.
    Refused(u16),
    /// Every transaction timed out.
    Silent,
}

#[derive(Debug, Clone)]
struct Question {
    ask: Ask,
    local_port: u16,
    destination: SocketAddr,
    change_ip: bool,
    change_port: bool,
    response_port: Option<u16>,
    /// Where a success must come from.
    expect_from: SocketAddr,
    /// Another local port an answer may arrive on (the lifetime probe's control port).
    also_on: Option<u16>,
    /// Transactions started, in order.
    ids: Vec<TransactionId>,
    /// Transactions still outstanding.
    live: u32,
    /// Waiting in the start queue.
    queued: bool,
    /// When the next transaction may start, if the question is still unanswered then.
    next_copy_at: Option<Instant>,
    /// When the first request went out.
    first_at: Option<Instant>,
    settled: Option<Settled>,
}

/// Where the procedure is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Not started.
    Idle,
    /// Test I alone.
    Connectivity,
    /// Mapping, filtering, hairpinning and the lifetime control together, until each has
    /// sent its first request (and so has its binding).
    Behaviour,
    /// Port sample `next` is the next to ask.
    Ports {
        next: u16,
    },
    /// Waiting for the behaviour questions still unanswered (the filtering tests' silence
    /// takes all their retransmissions); `samples` says whether port samples ran.
    Settling {
        samples: bool,
    },
    /// Waiting for the idle time to pass, then the probe.
    Lifetime {
        probe_at: Instant,
        asked: bool,
    },
    Done,
}

/// The RFC 5780 discovery machine (see the [module docs](self)).
#[derive(Debug)]
pub struct Discovery {
    config: DiscoveryConfig,
    rng: ChaCha8Rng,
    transactions: Transactions,
    /// Every transaction ever started, to its question: answers after a question settled are
    /// told apart from strangers'.
    ids: BTreeMap<TransactionId, usize>,
    questions: Vec<Question>,
    /// Questions waiting for a transaction to start, paced.
    queue: VecDeque<usize>,
    /// No new transaction before this.
    next_start: Option<Instant>,
    phase: Phase,
    started_at: Option<Instant>,
    /// The local IP the mapping port's answers arrived on, when the driver says.
    seen_local_ip: Option<IpAddr>,
    /// Test I found a NAT.
    translated: bool,
    address_rewriting: bool,
    steps_done: u32,
    /// [`Event::Provisional`] went out.
    provisional_sent: bool,
    /// When it goes, once the answers on their way had their time (or when test I's silence
    /// is taken for UDP blocked).
    provisional_at: Option<Instant>,
    /// A provisional report assuming UDP blocked went out (test I unanswered for
    /// [`DiscoveryConfig::assume_blocked_after`]).
    assumed_blocked: bool,
    /// The remembered behaviour, once test I confirmed the network: the provisional report's.
    recalled: Option<Behaviour>,
    events: VecDeque<Event>,
    stats: DiscoveryStats,
}

impl Discovery {
    /// A machine for `config`. It starts at [`start`](Self::start), or at the first
    /// `poll_transmit` or `handle_timeout`, whichever comes first (both fog-mio and the
    /// simulator drain a machine as soon as they get it).
    ///
    /// # Panics
    ///
    /// On a configuration no run can use: server port 0, local IP and server of different
    /// families, first port 0 or too high for all the local ports, 1 or more than
    /// [`MAX_PORT_SAMPLES`] port samples, 0 or more than [`MAX_TRANSACTIONS_PER_TEST`]
    /// transactions per test, or a retransmission config [`Transactions::new`] refuses.
    pub fn new(config: DiscoveryConfig) -> Self {
        assert_ne!(config.server.port(), 0, "the server's port must not be 0");
        assert_eq!(
            config.local_ip.is_ipv4(),
            config.server.is_ipv4(),
            "the local IP and the server must be of one address family"
        );
        assert!(
            config.port_samples != 1 && config.port_samples <= MAX_PORT_SAMPLES,
            "port samples must be 0 (off) or 2..=64"
        );
        assert!(
            (1..=MAX_TRANSACTIONS_PER_TEST).contains(&config.transactions_per_test),
            "transactions per test must be in 1..=8"
        );
        let last = port::FIRST_SAMPLE + config.port_samples;
        assert!(
            config.first_port != 0 && config.first_port.checked_add(last).is_some(),
            "the first port leaves no room for the local ports"
        );
        Self {
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            transactions: Transactions::new(config.retransmit),
            config,
            ids: BTreeMap::new(),
            questions: Vec::new(),
            queue: VecDeque::new(),
            next_start: None,
            phase: Phase::Idle,
            started_at: None,
            seen_local_ip: None,
            translated: false,
            address_rewriting: false,
            steps_done: 0,
            provisional_sent: false,
            provisional_at: None,
            assumed_blocked: false,
            recalled: None,
            events: VecDeque::new(),
            stats: DiscoveryStats::default(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &DiscoveryConfig {
        &self.config
    }

    /// The counters so far.
    pub fn stats(&self) -> &DiscoveryStats {
        &self.stats
    }

    /// Whether [`Event::Done`] has been produced.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Whether `packet` is an answer to one of this machine's transactions (or its own
    /// hairpinned request), on one of its ports: [`accepts`](SansIo::accepts) narrowed by
    /// transaction ID, for a driver that shares the ports with other STUN users (a node's
    /// connectivity checks on the mapping port).
    pub fn owns(&self, packet: &Receive<'_>) -> bool {
        // The transaction ID: bytes 8..20 of the STUN header (RFC 5389 §6).
        self.accepts(packet)
            && packet
                .payload
                .get(8..20)
                .and_then(|id| <[u8; 12]>::try_from(id).ok())
                .is_some_and(|id| self.ids.contains_key(&TransactionId::new(id)))
    }

    /// Starts the run at `now` (test I). Later calls do nothing.
    pub fn start(&mut self, now: Instant) {
        if self.phase != Phase::Idle {
            return;
        }
        self.started_at = Some(now);
        self.phase = Phase::Connectivity;
        let server = self.config.server;
        self.ask(Ask::Connectivity, port::MAPPING, server, server);
        self.advance(now);
    }

    /// Adds a plain question and queues its first transaction.
    fn ask(
        &mut self,
        ask: Ask,
        port_offset: u16,
        destination: SocketAddr,
        expect_from: SocketAddr,
    ) {
        let question = self.question(ask, port_offset, destination, expect_from);
        self.ask_with(question);
    }

    fn ask_with(&mut self, mut question: Question) {
        question.queued = true;
        self.queue.push_back(self.questions.len());
        self.questions.push(question);
    }

    fn find(&self, ask: Ask) -> Option<&Question> {
        self.questions.iter().find(|q| q.ask == ask)
    }

    fn settled(&self, ask: Ask) -> Option<Settled> {
        self.find(ask).and_then(|q| q.settled)
    }

    /// Runs everything that is due at `now` until nothing changes: transaction outcomes, further
    /// transactions, paced starts, and the procedure's next steps.
    fn advance(&mut self, now: Instant) {
        loop {
            self.collect_outcomes(now);
            self.queue_copies(now);
            self.start_due(now);
            if !self.step(now) {
                break;
            }
        }
        self.provisional_at = None;
        if !self.provisional_sent && self.phase != Phase::Done && self.plannable() {
            // A remembered behaviour waits for nothing: it is complete.
            let grace_over = match self.recalled {
                Some(_) => Some(now),
                None => self.answer_grace_over(),
            };
            match grace_over {
                Some(at) if at <= now => {
                    self.provisional_sent = true;
                    let report = self.report(now);
                    self.events.push_back(Event::Provisional(report));
                }
                at => self.provisional_at = at,
            }
        }
        self.assume_blocked(now);
    }

    /// Test I unanswered for [`DiscoveryConfig::assume_blocked_after`]: a provisional report
    /// that assumes UDP blocked, the most restrictive reading, so that a caller can go on over
    /// other means (a relay over TCP) instead of waiting out every retransmission. An answer
    /// after it still gets its own provisional report (or [`Event::Done`]).
    fn assume_blocked(&mut self, now: Instant) {
        let (Some(after), Some(started)) = (self.config.assume_blocked_after, self.started_at)
        else {
            return;
        };
        if self.assumed_blocked
            || self.provisional_sent
            || self.phase != Phase::Connectivity
            || self.settled(Ask::Connectivity).is_some()
        {
            return;
        }
        let at = started + after;
        if at <= now {
            self.assumed_blocked = true;
            let report = self.report(now);
            self.events.push_back(Event::Provisional(report));
        } else {
            self.provisional_at = Some(self.provisional_at.map_or(at, |p| p.min(at)));
        }
    }

    /// When every behaviour question still open has had the time an answer takes (twice test
    /// I's round trip, at least 1 ms, at most one initial RTO) since its first request: a
    /// provisional report then assumes the worst only for tests that are really silent, not
    /// for answers on their way. `None` while one has not been asked yet.
    fn answer_grace_over(&self) -> Option<Instant> {
        let rtt = match (
            self.find(Ask::Connectivity),
            self.settled(Ask::Connectivity),
        ) {
            (Some(q), Some(Settled::Mapped { at, .. })) => q
                .first_at
                .map_or(Duration::ZERO, |t| at.saturating_duration_since(t)),
            _ => Duration::ZERO,
        };
        let grace = (rtt * 2).clamp(Duration::from_millis(1), self.config.retransmit.initial_rto);
        let open = self
            .questions
            .iter()
            .filter(|q| q.settled.is_none() && !matches!(q.ask, Ask::Sample(_)));
        let mut latest = self.started_at?;
        for q in open {
            latest = latest.max(q.first_at? + grace);
        }
        Some(latest)
    }

    /// Whether what is settled so far is enough to plan with (see [`Event::Provisional`]).
    fn plannable(&self) -> bool {
        let samples_done = match self.phase {
            Phase::Idle | Phase::Connectivity | Phase::Done => return false,
            Phase::Behaviour | Phase::Ports { .. } => false,
            Phase::Settling { .. } | Phase::Lifetime { .. } => true,
        };
        if self.recalled.is_some() {
            return true;
        }
        if !self.translated {
            return true;
        }
        let x1 = match self.settled(Ask::Connectivity) {
            Some(Settled::Mapped { mapped, .. }) => mapped,
            _ => return false,
        };
        let mapping = match (self.find(Ask::MappingII), self.settled(Ask::MappingII)) {
            // No usable other address: the mapping cannot be tested at all.
            (None, _) => None,
            (Some(_), None) => return false,
            (Some(_), Some(Settled::Mapped { mapped: x2, .. })) if x2 == x1 => {
                Some(Mapping::EndpointIndependent)
            }
            (Some(_), Some(_)) => match self.settled(Ask::MappingIII) {
                None => return false,
                Some(_) => None,
            },
        };
        // An endpoint-independent mapping is its own prediction; any other needs the pattern.
        mapping == Some(Mapping::EndpointIndependent)
            || self.config.port_samples == 0
            || samples_done
    }

    fn collect_outcomes(&mut self, now: Instant) {
        while let Some((id, outcome)) = self.transactions.poll_outcome() {
            self.stats.timed_out += 1;
            if let Outcome::BufferTooSmall { needed } = outcome {
                self.events.push_back(Event::BufferTooSmall { needed });
            }
            let Some(&index) = self.ids.get(&id) else {
                debug_assert!(false, "an outcome for a transaction never started");
                continue;
            };
            let max = self.config.transactions_per_test;
            let q = &mut self.questions[index];
            q.live = q.live.saturating_sub(1);
            if q.settled.is_some() || q.live > 0 {
                continue;
            }
            if q.ids.len() as u32 >= max {
                q.settled = Some(Settled::Silent);
                q.next_copy_at = None;
            } else if !q.queued {
                // The last transaction died before the next was due: start one now.
                q.next_copy_at = Some(now);
            }
        }
    }

    fn queue_copies(&mut self, now: Instant) {
        for (index, q) in self.questions.iter_mut().enumerate() {
            if q.settled.is_none() && !q.queued && q.next_copy_at.is_some_and(|at| at <= now) {
                q.next_copy_at = None;
                q.queued = true;
                self.queue.push_back(index);
            }
        }
    }

    /// Starts queued transactions, one per pacing interval.
    fn start_due(&mut self, now: Instant) {
        while self.next_start.is_none_or(|at| at <= now) {
            let Some(index) = self.queue.pop_front() else {
                return;
            };
            self.questions[index].queued = false;
            if self.questions[index].settled.is_some() {
                continue;
            }
            self.start_transaction(now, index);
            self.next_start = Some(now + self.config.pacing);
        }
    }

    fn start_transaction(&mut self, now: Instant, index: usize) {
        let id = loop {
            let mut bytes = [0u8; 12];
            self.rng.fill_bytes(&mut bytes);
            let id = TransactionId::new(bytes);
            if !self.ids.contains_key(&id) {
                break id;
            }
        };
        let q = &self.questions[index];
        let request = BindingRequest {
            change_ip: q.change_ip,
            change_port: q.change_port,
            response_port: q.response_port,
            ..BindingRequest::new(id)
        };
        let source = SocketAddr::new(self.config.local_ip, q.local_port);
        let destination = q.destination;
        let bytes = match request.to_message().to_bytes(None) {
            Ok(bytes) => bytes,
            Err(e) => {
                // A Binding request with at most CHANGE-REQUEST and RESPONSE-PORT always
                // encodes; should it not, the question goes unanswered rather than panic.
                debug_assert!(false, "a Binding request failed to encode: {e}");
                let q = &mut self.questions[index];
                if q.live == 0 {
                    q.settled = Some(Settled::Silent);
                }
                return;
            }
        };
        self.transactions
            .start(now, id, bytes, destination, Some(source));
        self.ids.insert(id, index);
        self.stats.transactions += 1;
        let max = self.config.transactions_per_test as usize;
        // Half an RTO apart, so that the transactions' retransmissions interleave (RFC 5780 §5).
        let stagger = self.config.retransmit.initial_rto / 2;
        let q = &mut self.questions[index];
        q.ids.push(id);
        q.live += 1;
        q.first_at.get_or_insert(now);
        q.next_copy_at = (q.ids.len() < max).then(|| now + stagger);
    }

    /// Takes the procedure one step when the current one has settled; `true` if it did.
    fn step(&mut self, now: Instant) -> bool {
        match self.phase {
            Phase::Idle | Phase::Done => false,
            Phase::Connectivity => match self.settled(Ask::Connectivity) {
                None => false,
                Some(Settled::Mapped { mapped, other, .. }) => {
                    self.after_test_i(mapped, other);
                    true
                }
                Some(_) => {
                    self.finish(now);
                    true
                }
            },
            Phase::Behaviour => {
                // Port samples may start once every other binding exists: retransmissions and
                // further transactions reuse their question's port, so no other new binding
                // lands between two samples.
                if self
                    .questions
                    .iter()
                    .any(|q| q.first_at.is_none() && q.settled.is_none())
                {
                    return false;
                }
                let samples = self.translated && self.config.port_samples > 0;
                self.phase = if samples {
                    Phase::Ports { next: 0 }
                } else {
                    Phase::Settling { samples }
                };
                true
            }
            Phase::Settling { samples } => {
                if self.questions.iter().any(|q| q.settled.is_none()) {
                    return false;
                }
                self.progress_behaviour();
                if samples {
                    self.progress(Step::PortPattern);
                }
                self.phase = self.lifetime_phase(now);
                true
            }
            Phase::Ports { next } => {
                if next > 0 && self.settled(Ask::Sample(next - 1)).is_none() {
                    return false;
                }
                if next < self.config.port_samples {
                    let server = self.config.server;
                    self.ask(Ask::Sample(next), port::FIRST_SAMPLE + next, server, server);
                    self.phase = Phase::Ports { next: next + 1 };
                } else {
                    self.phase = Phase::Settling { samples: true };
                }
                true
            }
            Phase::Lifetime { probe_at, asked } => {
                if !asked {
                    if now < probe_at {
                        return false;
                    }
                    if self.ask_lifetime_probe() {
                        self.phase = Phase::Lifetime {
                            probe_at,
                            asked: true,
                        };
                    } else {
                        self.progress(Step::Lifetime);
                        self.finish(now);
                    }
                    return true;
                }
                if self.settled(Ask::LifetimeProbe).is_none() {
                    return false;
                }
                self.progress(Step::Lifetime);
                self.finish(now);
                true
            }
        }
    }

    fn after_test_i(&mut self, x1: SocketAddr, other: Option<SocketAddr>) {
        let local = self.local_addr();
        self.translated = !self.is_own(x1);
        self.recalled = self
            .config
            .remembered
            .filter(|r| {
                r.public == x1.ip()
                    && matches!(r.behaviour, Behaviour::Nat { .. }) == self.translated
                    && r.behaviour != Behaviour::UdpBlocked
            })
            .map(|r| r.behaviour);
        self.events.push_back(Event::Mapped {
            local,
            mapped: x1,
            other_address: other,
        });

        let server = self.config.server;
        if let Some(other) = other.filter(|o| self.usable_other(*o)) {
            if self.translated {
                let a2p1 = SocketAddr::new(other.ip(), server.port());
                self.ask(Ask::MappingII, port::MAPPING, a2p1, a2p1);
                self.ask(Ask::MappingIII, port::MAPPING, other, other);
            }
            let a1p2 = SocketAddr::new(server.ip(), other.port());
            for (ask, change_ip, expect_from) in [
                (Ask::FilteringII, true, other),
                (Ask::FilteringIII, false, a1p2),
            ] {
                self.ask_with(Question {
                    change_ip,
                    change_port: true,
                    ..self.question(ask, port::FILTERING, server, expect_from)
                });
            }
        }
        if self.translated && self.config.hairpinning {
            // Our own request is the "answer"; where it arrives from is not checked.
            self.ask(Ask::Hairpin, port::MAPPING, x1, x1);
        }
        if self.config.lifetime.is_some() {
            self.ask(Ask::LifetimeControl, port::LIFETIME_CONTROL, server, server);
        }
        self.phase = Phase::Behaviour;
        // After the questions are asked: the total counts what they make applicable.
        self.progress(Step::Connectivity);
    }

    fn question(
        &self,
        ask: Ask,
        port_offset: u16,
        destination: SocketAddr,
        expect_from: SocketAddr,
    ) -> Question {
        Question {
            ask,
            local_port: self.config.port(port_offset),
            destination,
            change_ip: false,
            change_port: false,
            response_port: None,
            expect_from,
            also_on: None,
            ids: Vec::new(),
            live: 0,
            queued: false,
            next_copy_at: None,
            first_at: None,
            settled: None,
        }
    }

    /// Asks the lifetime probe; `false` without a control binding to probe (which
    /// `lifetime_phase` rules out).
    fn ask_lifetime_probe(&mut self) -> bool {
        let server = self.config.server;
        let control_port = self.config.port(port::LIFETIME_CONTROL);
        let Some(Settled::Mapped { mapped, .. }) = self.settled(Ask::LifetimeControl) else {
            return false;
        };
        self.ask_with(Question {
            response_port: Some(mapped.port()),
            also_on: Some(control_port),
            ..self.question(Ask::LifetimeProbe, port::LIFETIME_PROBE, server, server)
        });
        true
    }

    /// The phase after the port samples: waiting for the lifetime probe, or done.
    fn lifetime_phase(&mut self, now: Instant) -> Phase {
        match (self.config.lifetime, self.settled(Ask::LifetimeControl)) {
            (Some(idle), Some(Settled::Mapped { at, .. })) => Phase::Lifetime {
                probe_at: at + idle,
                asked: false,
            },
            (Some(_), _) => {
                self.progress(Step::Lifetime);
                self.finish(now);
                Phase::Done
            }
            (None, _) => {
                self.finish(now);
                Phase::Done
            }
        }
    }

    fn progress_behaviour(&mut self) {
        if self.find(Ask::MappingII).is_some() {
            self.progress(Step::Mapping);
        }
        if self.find(Ask::FilteringII).is_some() {
            self.progress(Step::Filtering);
        }
        if self.find(Ask::Hairpin).is_some() {
            self.progress(Step::Hairpinning);
        }
    }

    fn progress(&mut self, step: Step) {
        self.steps_done += 1;
        let total = self.steps_done + self.steps_left(step);
        self.events.push_back(Event::Progress {
            step,
            done: self.steps_done,
            total,
        });
    }

    /// Steps after `step` that will still run.
    fn steps_left(&self, step: Step) -> u32 {
        let have_other = self.find(Ask::FilteringII).is_some();
        let config = &self.config;
        let planned = [
            (Step::Mapping, self.translated && have_other),
            (Step::Filtering, have_other),
            (Step::Hairpinning, self.translated && config.hairpinning),
            (
                Step::PortPattern,
                self.translated && config.port_samples > 0,
            ),
            (Step::Lifetime, config.lifetime.is_some()),
        ];
        planned
            .iter()
            .filter(|(s, runs)| *s > step && *runs)
            .count() as u32
    }

    fn finish(&mut self, now: Instant) {
        for q in &mut self.questions {
            for id in &q.ids {
                self.transactions.complete(id);
            }
            q.live = 0;
            q.next_copy_at = None;
        }
        self.queue.clear();
        self.phase = Phase::Done;
        let report = self.report(now);
        self.events.push_back(Event::Done(report));
    }

    /// The mapping port's local address, as far as the machine knows it.
    fn local_addr(&self) -> SocketAddr {
        let ip = self.seen_local_ip.unwrap_or(self.config.local_ip);
        SocketAddr::new(ip, self.config.port(port::MAPPING))
    }

    /// Whether `mapped` is the mapping port's own address: no translation (RFC 5780 §4.3).
    fn is_own(&self, mapped: SocketAddr) -> bool {
        let ip = mapped.ip();
        mapped.port() == self.config.port(port::MAPPING)
            && (self.seen_local_ip == Some(ip)
                || (!self.config.local_ip.is_unspecified() && self.config.local_ip == ip)
                || self.config.own_addresses.contains(&ip))
    }

    /// Whether an advertised alternate address can serve the tests: the server's family, and
    /// another IP and another port than the primary's.
    fn usable_other(&self, other: SocketAddr) -> bool {
        let server = self.config.server;
        other.is_ipv4() == server.is_ipv4()
            && other.ip() != server.ip()
            && other.port() != server.port()
            && other.port() != 0
            && !other.ip().is_unspecified()
    }

    fn handle_response(&mut self, now: Instant, packet: &Receive<'_>, message: Message) {
        if message.cookie != Cookie::Magic {
            // Our requests carry the magic cookie, and a server echoes it (RFC 5389 §12.2).
            self.stats.unknown_transaction += 1;
            return;
        }
        let Some(&index) = self.ids.get(&message.transaction_id) else {
            self.stats.unknown_transaction += 1;
            return;
        };
        let q = &self.questions[index];
        if q.settled.is_some() {
            self.stats.late += 1;
            return;
        }
        if q.ask == Ask::Hairpin {
            // Nobody answers a request we sent to ourselves.
            self.stats.unexpected += 1;
            return;
        }
        let local_port = packet.local.port();
        if local_port != q.local_port && Some(local_port) != q.also_on {
            self.stats.wrong_local += 1;
            return;
        }
        let Some(response) = BindingResponse::from_message(message) else {
            self.stats.unexpected += 1;
            return;
        };
        let settled = match &response.error {
            Some(error) => {
                // An error comes from where the request went (RFC 5389 §7.3), which for a
                // CHANGE-REQUEST is not where a success would come from.
                if packet.source != q.destination && packet.source != q.expect_from {
                    self.stats.wrong_source += 1;
                    return;
                }
                Settled::Refused(error.code)
            }
            None => {
                if packet.source != q.expect_from {
                    self.stats.wrong_source += 1;
                    return;
                }
                let Some(mapped) = response
                    .mapped_address()
                    .filter(|m| m.port() != 0 && !m.ip().is_unspecified())
                else {
                    self.stats.malformed += 1;
                    return;
                };
                if let (Some(xor), Some(plain)) = (response.xor_mapped, response.mapped) {
                    self.address_rewriting |= xor != plain;
                }
                Settled::Mapped {
                    mapped,
                    other: response.other(),
                    local_port,
                    at: now,
                }
            }
        };
        if local_port == self.config.port(port::MAPPING) && !packet.local.ip().is_unspecified() {
            self.seen_local_ip = Some(packet.local.ip());
        }
        self.settle(index, &response.transaction_id, settled);
    }

    fn handle_request(&mut self, packet: &Receive<'_>, message: &Message) {
        // Our own requests carry the magic cookie.
        let index = (message.cookie == Cookie::Magic)
            .then(|| self.ids.get(&message.transaction_id).copied())
            .flatten();
        let Some(q) = index.map(|i| &self.questions[i]) else {
            self.stats.unexpected += 1;
            return;
        };
        if q.ask != Ask::Hairpin {
            self.stats.unexpected += 1;
        } else if q.settled.is_some() {
            self.stats.late += 1;
        } else if packet.local.port() != q.local_port {
            self.stats.wrong_local += 1;
        } else if let Some(index) = index {
            self.settle(index, &message.transaction_id, Settled::Hairpinned);
        }
    }

    /// Settles question `index` with the answer to transaction `id`, ending its other
    /// transactions.
    fn settle(&mut self, index: usize, id: &TransactionId, settled: Settled) {
        self.stats.accepted += 1;
        let q = &mut self.questions[index];
        let sent = self.transactions.complete(id).unwrap_or(1);
        let copy = q.ids.iter().position(|i| i == id).unwrap_or(0);
        if sent > 1 || copy > 0 {
            self.stats.answered_after_retry += 1;
        }
        for other in &q.ids {
            self.transactions.complete(other);
        }
        q.live = 0;
        q.next_copy_at = None;
        q.settled = Some(settled);
    }

    fn report(&self, now: Instant) -> Report {
        let started = self.started_at.unwrap_or(now);
        let server = self.config.server;
        let test_i = self.settled(Ask::Connectivity);
        let (x1, other) = match test_i {
            Some(Settled::Mapped { mapped, other, .. }) => (Some(mapped), other),
            _ => (None, None),
        };
        let mapped_of = |ask| match self.settled(ask) {
            Some(Settled::Mapped { mapped, .. }) => Some(mapped),
            _ => None,
        };
        // Test I still running, assumed blocked (`assume_blocked`).
        let assumed = self.assumed_blocked && test_i.is_none() && self.phase != Phase::Done;
        // Why nothing after test I ran, if so.
        let blocked = match test_i {
            Some(Settled::Mapped { .. }) => None,
            Some(Settled::Refused(code)) => Some(Untested::ServerRefused(code)),
            Some(Settled::Silent) => Some(Untested::UdpBlocked),
            None if assumed => Some(Untested::Pending),
            // Hairpinned cannot settle test I; treat as no answer.
            Some(Settled::Hairpinned) | None => Some(Untested::NoAnswer),
        };
        let other_untested = match other {
            None => Some(Untested::NoOtherAddress),
            Some(o) if !self.usable_other(o) => Some(Untested::UnusableOtherAddress),
            Some(_) => None,
        };

        let nat = match blocked {
            Some(why) => Test::NotTested(why),
            None => Test::Tested(self.translated),
        };
        let mapping = if let Some(why) = blocked {
            Test::NotTested(why)
        } else if !self.translated {
            Test::Tested(Mapping::EndpointIndependent)
        } else if let Some(why) = other_untested {
            Test::NotTested(why)
        } else {
            self.mapping(x1)
        };
        let filtering = if let Some(why) = blocked.or(other_untested) {
            Test::NotTested(why)
        } else {
            self.filtering()
        };
        let port_samples: Vec<PortSample> = (0..self.config.port_samples)
            .filter_map(|i| match self.settled(Ask::Sample(i)) {
                Some(Settled::Mapped {
                    mapped, local_port, ..
                }) => Some(PortSample { local_port, mapped }),
                _ => None,
            })
            .collect();
        let sampling = matches!(self.phase, Phase::Behaviour | Phase::Ports { .. });
        let port_pattern = match not_nat(blocked, self.translated, self.config.port_samples == 0) {
            Some(why) => Test::NotTested(why),
            None if sampling => Test::NotTested(Untested::Pending),
            None => report::port_pattern(&port_samples)
                .map_or(Test::NotTested(Untested::TooFewSamples), Test::Tested),
        };
        let hairpinning = match not_nat(blocked, self.translated, !self.config.hairpinning) {
            Some(why) => Test::NotTested(why),
            None => match self.settled(Ask::Hairpin) {
                None if self.phase != Phase::Done => Test::NotTested(Untested::Pending),
                settled => Test::Tested(settled == Some(Settled::Hairpinned)),
            },
        };
        let lifetime = self.lifetime(blocked);

        let behaviour = if let Some(recalled) = self.recalled.filter(|_| self.phase != Phase::Done)
        {
            recalled
        } else if blocked == Some(Untested::UdpBlocked) || assumed {
            Behaviour::UdpBlocked
        } else if nat == Test::Tested(false) {
            match filtering
                .tested()
                .copied()
                .unwrap_or(Filtering::AddressAndPortDependent)
            {
                Filtering::EndpointIndependent => Behaviour::Open,
                filtering => Behaviour::Firewall { filtering },
            }
        } else {
            Behaviour::Nat {
                mapping: mapping
                    .tested()
                    .copied()
                    .unwrap_or(Mapping::AddressAndPortDependent),
                filtering: filtering
                    .tested()
                    .copied()
                    .unwrap_or(Filtering::AddressAndPortDependent),
                ports: port_pattern
                    .tested()
                    .copied()
                    .unwrap_or(PortPattern::Random),
                hairpinning: hairpinning.tested().copied().unwrap_or(false),
            }
        };
        Report {
            behaviour,
            classic_name: behaviour.classic_name(),
            server,
            other_address: other,
            local: self.local_addr(),
            mapped: x1,
            mapped_test_ii: mapped_of(Ask::MappingII),
            mapped_test_iii: mapped_of(Ask::MappingIII),
            nat,
            mapping,
            filtering,
            port_pattern,
            port_samples,
            hairpinning,
            lifetime,
            address_rewriting: self.address_rewriting,
            stats: self.stats,
            duration: now.saturating_duration_since(started),
        }
    }

    /// Why questions `asks` have no finding: still running (before [`Event::Done`]) or no
    /// answer.
    fn unanswered(&self, asks: &[Ask]) -> Untested {
        let running = asks
            .iter()
            .any(|&ask| self.find(ask).is_some_and(|q| q.settled.is_none()));
        if running && self.phase != Phase::Done {
            Untested::Pending
        } else {
            Untested::NoAnswer
        }
    }

    /// RFC 5780 §4.3 from tests II and III.
    fn mapping(&self, x1: Option<SocketAddr>) -> Test<Mapping> {
        match self.settled(Ask::MappingII) {
            Some(Settled::Mapped { mapped: x2, .. }) if Some(x2) == x1 => {
                Test::Tested(Mapping::EndpointIndependent)
            }
            Some(Settled::Mapped { mapped: x2, .. }) => match self.settled(Ask::MappingIII) {
                Some(Settled::Mapped { mapped: x3, .. }) if x3 == x2 => {
                    Test::Tested(Mapping::AddressDependent)
                }
                Some(Settled::Mapped { .. }) => Test::Tested(Mapping::AddressAndPortDependent),
                Some(Settled::Refused(code)) => Test::NotTested(Untested::ServerRefused(code)),
                _ => Test::NotTested(self.unanswered(&[Ask::MappingIII])),
            },
            Some(Settled::Refused(code)) => Test::NotTested(Untested::ServerRefused(code)),
            _ => Test::NotTested(self.unanswered(&[Ask::MappingII])),
        }
    }

    /// RFC 5780 §4.4 from tests II and III.
    fn filtering(&self) -> Test<Filtering> {
        match (
            self.settled(Ask::FilteringII),
            self.settled(Ask::FilteringIII),
        ) {
            (Some(Settled::Mapped { .. }), _) => Test::Tested(Filtering::EndpointIndependent),
            (Some(Settled::Refused(code)), _) | (_, Some(Settled::Refused(code))) => {
                Test::NotTested(Untested::ServerRefused(code))
            }
            (Some(Settled::Silent), Some(Settled::Mapped { .. })) => {
                Test::Tested(Filtering::AddressDependent)
            }
            (Some(Settled::Silent), Some(Settled::Silent)) => {
                Test::Tested(Filtering::AddressAndPortDependent)
            }
            _ => Test::NotTested(self.unanswered(&[Ask::FilteringII, Ask::FilteringIII])),
        }
    }

    /// RFC 5780 §4.6.
    fn lifetime(&self, blocked: Option<Untested>) -> Test<Lifetime> {
        if self.config.lifetime.is_none() {
            return Test::NotTested(Untested::Disabled);
        }
        if let Some(why) = blocked {
            return Test::NotTested(why);
        }
        if self.phase != Phase::Done {
            return Test::NotTested(Untested::Pending);
        }
        let control_at = match self.settled(Ask::LifetimeControl) {
            Some(Settled::Mapped { at, .. }) => at,
            Some(Settled::Refused(code)) => return Test::NotTested(Untested::ServerRefused(code)),
            _ => return Test::NotTested(Untested::NoAnswer),
        };
        let Some(probe) = self.find(Ask::LifetimeProbe) else {
            return Test::NotTested(Untested::NoAnswer);
        };
        let idle = probe.first_at.map_or(Duration::ZERO, |at| {
            at.saturating_duration_since(control_at)
        });
        let control_port = self.config.port(port::LIFETIME_CONTROL);
        match probe.settled {
            Some(Settled::Mapped { local_port, .. }) => Test::Tested(Lifetime {
                idle,
                alive: local_port == control_port,
            }),
            // An answer that does not come back on the control port means the binding is
            // gone (RFC 5780 §4.6), loss aside: the probe had all its retransmissions.
            Some(Settled::Silent) => Test::Tested(Lifetime { idle, alive: false }),
            Some(Settled::Refused(code)) => Test::NotTested(Untested::ServerRefused(code)),
            Some(Settled::Hairpinned) | None => Test::NotTested(Untested::NoAnswer),
        }
    }
}

/// Why a test that needs a NAT did not run: test I failed, there is no NAT, or it is off.
fn not_nat(blocked: Option<Untested>, translated: bool, disabled: bool) -> Option<Untested> {
    if let Some(why) = blocked {
        Some(why)
    } else if !translated {
        Some(Untested::NoNat)
    } else if disabled {
        Some(Untested::Disabled)
    } else {
        None
    }
}

/// The unspecified address of `ip`'s family.
fn unspecified_like(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

impl SansIo for Discovery {
    type Event = Event;

    /// STUN (by its first byte, RFC 7983 §7) arriving on one of the machine's local ports.
    fn accepts(&self, packet: &Receive<'_>) -> bool {
        classify(packet.payload, false) == Protocol::Stun
            && packet
                .local
                .port()
                .checked_sub(self.config.first_port)
                .is_some_and(|offset| {
                    matches!(offset, port::MAPPING | port::FILTERING)
                        || (self.config.lifetime.is_some()
                            && matches!(offset, port::LIFETIME_CONTROL | port::LIFETIME_PROBE))
                        || (port::FIRST_SAMPLE..port::FIRST_SAMPLE + self.config.port_samples)
                            .contains(&offset)
                })
    }

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        self.stats.received += 1;
        match Message::decode(packet.payload) {
            Err(_) => self.stats.malformed += 1,
            Ok(message) if message.method != Method::BINDING => self.stats.unexpected += 1,
            Ok(message) => match message.class {
                Class::SuccessResponse | Class::ErrorResponse => {
                    self.handle_response(now, &packet, message)
                }
                Class::Request => self.handle_request(&packet, &message),
                Class::Indication => self.stats.unexpected += 1,
            },
        }
        if self.phase != Phase::Idle {
            self.advance(now);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.start(now);
        self.transactions.handle_timeout(now);
        self.advance(now);
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        self.start(now);
        loop {
            if let Some(transmit) = self.transactions.poll_transmit(now, buf) {
                self.stats.requests += 1;
                return Some(transmit);
            }
            // A request too large for `buf` ends its transaction: account for it, which may
            // start another.
            let before = self.stats.transactions;
            let timed_out = self.stats.timed_out;
            self.advance(now);
            if self.stats.transactions == before && self.stats.timed_out == timed_out {
                return None;
            }
        }
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        if matches!(self.phase, Phase::Idle | Phase::Done) {
            return None;
        }
        let mut next = self.transactions.poll_timeout();
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        if !self.queue.is_empty() {
            consider(self.next_start);
        }
        consider(self.provisional_at);
        for q in &self.questions {
            if q.settled.is_none() && !q.queued {
                consider(q.next_copy_at);
            }
        }
        if let Phase::Lifetime {
            probe_at,
            asked: false,
        } = self.phase
        {
            consider(Some(probe_at));
        }
        next
    }
}

#[cfg(test)]
mod tests;
