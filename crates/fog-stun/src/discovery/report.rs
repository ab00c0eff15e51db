//! What discovery found, and how sure it is.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use fog_core::nat::{Behaviour, Filtering, Mapping, PortPattern};

/// The result of one test: what it found, or why it found nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Test<T> {
    /// The test ran and its answers say this.
    Tested(T),
    /// The test did not run, or ran without a usable answer.
    NotTested(Untested),
}

impl<T> Test<T> {
    /// The finding, if the test ran.
    pub fn tested(&self) -> Option<&T> {
        match self {
            Test::Tested(value) => Some(value),
            Test::NotTested(_) => None,
        }
    }

    /// Why the test has no finding, if it has none.
    pub fn untested(&self) -> Option<Untested> {
        match self {
            Test::Tested(_) => None,
            Test::NotTested(why) => Some(*why),
        }
    }

    /// Whether the test either ran or does not apply (see [`Untested::applies`]): a result a
    /// reader can take as complete.
    pub fn is_settled(&self) -> bool {
        match self {
            Test::Tested(_) => true,
            Test::NotTested(why) => !why.applies(),
        }
    }
}

impl<T: fmt::Display> fmt::Display for Test<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Test::Tested(value) => value.fmt(f),
            Test::NotTested(why) => write!(f, "not tested ({why})"),
        }
    }
}

/// Why a test has no finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Untested {
    /// Turned off in the [`DiscoveryConfig`](super::DiscoveryConfig).
    Disabled,
    /// Test I got no answer: nothing else can run (RFC 5780 §4.2).
    UdpBlocked,
    /// Test I showed no NAT: there is no mapping to hairpin through and no port pattern.
    NoNat,
    /// The server sent neither OTHER-ADDRESS (RFC 5780 §7.4) nor CHANGED-ADDRESS (RFC 3489
    /// §11.2.3): it has one address, and mapping and filtering need two (RFC 5780 §4.3, §4.4).
    NoOtherAddress,
    /// The server's OTHER-ADDRESS shares its IP or port with the primary address, or is of the
    /// other address family, so the tests it should enable would not test anything.
    UnusableOtherAddress,
    /// A request that is always answered when nothing is lost went unanswered through every
    /// retransmission: the path lost too much, or the server stopped answering.
    NoAnswer,
    /// The server answered with this error code (e.g. 420 to a CHANGE-REQUEST or RESPONSE-PORT
    /// it does not support, RFC 5780 §5).
    ServerRefused(u16),
    /// Fewer than two port samples were answered: no pattern can be read from one port.
    TooFewSamples,
    /// Still running when this report was made: a provisional report
    /// ([`Event::Provisional`](super::Event::Provisional)).
    Pending,
}

impl Untested {
    /// Whether the test would have applied: `false` for tests turned off or meaningless here
    /// (UDP blocked, no NAT), `true` for tests that should have run and could not.
    pub fn applies(self) -> bool {
        !matches!(self, Self::Disabled | Self::UdpBlocked | Self::NoNat)
    }
}

impl fmt::Display for Untested {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => f.write_str("disabled"),
            Self::UdpBlocked => f.write_str("UDP blocked"),
            Self::NoNat => f.write_str("no NAT"),
            Self::NoOtherAddress => f.write_str("the server has only one address"),
            Self::UnusableOtherAddress => f.write_str("the server's other address is unusable"),
            Self::NoAnswer => f.write_str("no answer"),
            Self::ServerRefused(code) => write!(f, "the server refused with {code}"),
            Self::TooFewSamples => f.write_str("fewer than two port samples answered"),
            Self::Pending => f.write_str("still running"),
        }
    }
}

/// One fresh local port's binding, for the port pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortSample {
    /// The local port the request left from.
    pub local_port: u16,
    /// The mapped address the server saw.
    pub mapped: SocketAddr,
}

/// The binding lifetime test's finding (RFC 5780 §4.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Lifetime {
    /// How long the binding was left idle: from the control port's answer to the probe.
    pub idle: Duration,
    /// Whether the binding was still there: the probe's answer arrived on the control port.
    pub alive: bool,
}

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = if self.alive { "alive" } else { "expired" };
        write!(f, "{state} after {:.1} s idle", self.idle.as_secs_f64())
    }
}

/// Counters of what the discovery machine sent and received. Every datagram handed to
/// `handle_packet` lands in exactly one of the counters after `received`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct DiscoveryStats {
    /// Transactions started (each test asks with up to
    /// [`transactions_per_test`](super::DiscoveryConfig::transactions_per_test)).
    pub transactions: u32,
    /// Requests sent, retransmissions included.
    pub requests: u32,
    /// Transactions that ended without an answer (RFC 5389 §7.2.1 timeout).
    pub timed_out: u32,
    /// Tests answered only after a retransmission or by a second transaction: a sign of loss.
    pub answered_after_retry: u32,
    /// Datagrams handed to `handle_packet`.
    pub received: u64,
    /// Answers accepted (hairpinned requests included).
    pub accepted: u64,
    /// Answers to a test that was already settled: a duplicate, or the slower of two
    /// transactions.
    pub late: u64,
    /// Responses whose transaction ID is not one of ours: stray or forged.
    pub unknown_transaction: u64,
    /// Responses with one of our IDs from an address the test did not ask for (for a
    /// CHANGE-REQUEST test, anything but the changed address): ignored, the test goes on.
    pub wrong_source: u64,
    /// Responses with one of our IDs on a local port the test did not send from.
    pub wrong_local: u64,
    /// Datagrams that are not a valid STUN message, and success responses without a usable
    /// mapped address.
    pub malformed: u64,
    /// Valid STUN that is no answer to us: requests other than our own hairpinned one,
    /// indications, other methods.
    pub unexpected: u64,
}

/// What discovery found: the behaviour in RFC 4787's terms, the classic RFC 3489 name, the
/// addresses it saw, and for each test whether it ran.
///
/// Where a test could not run, [`behaviour`](Self::behaviour) assumes the most restrictive
/// value (address-and-port-dependent mapping and filtering, random ports, no hairpinning): an
/// application must assume behaviour can become more restrictive at any time (RFC 5780 §4), and
/// a punching strategy that plans for the worst does not fail by planning. The per-test fields
/// say which parts were measured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// What stands between the host and the server.
    pub behaviour: Behaviour,
    /// `behaviour`'s classic name (RFC 3489 §5), which cannot express the port pattern.
    pub classic_name: &'static str,
    /// The server's primary address (A1:P1), as asked.
    pub server: SocketAddr,
    /// The server's alternate address (A2:P2) from OTHER-ADDRESS or CHANGED-ADDRESS, as
    /// advertised (see [`mapping`](Self::mapping) for whether it was usable).
    pub other_address: Option<SocketAddr>,
    /// The local address of the mapping tests' socket, as far as the machine knows it (the IP is
    /// unspecified when the driver binds a wildcard and nothing told the machine its address).
    pub local: SocketAddr,
    /// X1, the mapped address of test I (RFC 5780 §4.3).
    pub mapped: Option<SocketAddr>,
    /// X2, the mapped address of mapping test II (to A2:P1).
    pub mapped_test_ii: Option<SocketAddr>,
    /// X3, the mapped address of mapping test III (to A2:P2).
    pub mapped_test_iii: Option<SocketAddr>,
    /// Whether addresses are translated (test I: X1 differs from the local address).
    pub nat: Test<bool>,
    /// Mapping behaviour (RFC 5780 §4.3; endpoint-independent when there is no NAT, as the
    /// section says).
    pub mapping: Test<Mapping>,
    /// Filtering behaviour (RFC 5780 §4.4).
    pub filtering: Test<Filtering>,
    /// The port allocation pattern across fresh local ports.
    pub port_pattern: Test<PortPattern>,
    /// The answered port samples, in the order their sockets were opened.
    pub port_samples: Vec<PortSample>,
    /// Whether the NAT hairpins (RFC 5780 §3.4).
    pub hairpinning: Test<bool>,
    /// The binding lifetime test (RFC 5780 §4.6), off by default.
    pub lifetime: Test<Lifetime>,
    /// Some answer carried a MAPPED-ADDRESS that differs from its XOR-MAPPED-ADDRESS: a generic
    /// ALG on the path rewrites addresses in payloads (RFC 5780 §3.6).
    pub address_rewriting: bool,
    /// Counters, for judging how lossy the run was.
    pub stats: DiscoveryStats,
    /// From the first request to the report.
    pub duration: Duration,
}

impl Report {
    /// Whether every test that applies ran: the behaviour was measured, not assumed.
    pub fn is_complete(&self) -> bool {
        self.nat.is_settled()
            && self.mapping.is_settled()
            && self.filtering.is_settled()
            && self.port_pattern.is_settled()
            && self.hairpinning.is_settled()
            && self.lifetime.is_settled()
    }
}

/// Reads a port pattern out of samples taken from consecutive local ports in the order the
/// sockets were opened, as `fog_sim::observe::port_pattern` does: all external ports equal to
/// their local ports is preservation; a constant step per socket opened is sequential (a lost
/// sample leaves a gap in the local ports, which scales the expected step, so it neither breaks
/// nor fakes a pattern); anything else is random. `None` below two samples.
pub(super) fn port_pattern(samples: &[PortSample]) -> Option<PortPattern> {
    if samples.len() < 2 {
        return None;
    }
    if samples.iter().all(|s| s.local_port == s.mapped.port()) {
        return Some(PortPattern::Preserved);
    }
    let mut delta = None;
    for pair in samples.windows(2) {
        let sockets_between = i32::from(pair[1].local_port) - i32::from(pair[0].local_port);
        let moved = i32::from(pair[1].mapped.port()) - i32::from(pair[0].mapped.port());
        if sockets_between <= 0 || moved % sockets_between != 0 {
            return Some(PortPattern::Random);
        }
        let step = moved / sockets_between;
        if step == 0 || delta.is_some_and(|d| d != step) {
            return Some(PortPattern::Random);
        }
        delta = Some(step);
    }
    Some(
        delta.map_or(PortPattern::Random, |delta| PortPattern::Sequential {
            delta,
        }),
    )
}
