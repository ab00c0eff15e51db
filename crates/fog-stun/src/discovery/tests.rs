//! Discovery tests with `Repr`s: the machine's requests are read as [`Message`]s and answered
//! with hand-built [`BindingResponse`]s, in the style of smoltcp's socket tests. The simulator
//! proof, with a real server behind real NAT models, is `tests/sim_discovery.rs`.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use super::*;
use crate::wire::{BindingResponse, ErrorCode};

const FIRST: u16 = 40_000;

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn a1p1() -> SocketAddr {
    addr("198.51.100.1:3478")
}

fn a2p2() -> SocketAddr {
    addr("198.51.100.2:3479")
}

fn a2p1() -> SocketAddr {
    addr("198.51.100.2:3478")
}

fn a1p2() -> SocketAddr {
    addr("198.51.100.1:3479")
}

/// The host's address as the driver reports it.
fn local(port: u16) -> SocketAddr {
    SocketAddr::new("192.168.1.2".parse().unwrap(), port)
}

fn x1() -> SocketAddr {
    addr("203.0.113.1:40000")
}

fn epoch() -> Instant {
    #[allow(clippy::disallowed_methods)] // tests take any epoch
    Instant::now()
}

fn config() -> DiscoveryConfig {
    DiscoveryConfig {
        first_port: FIRST,
        port_samples: 2,
        ..DiscoveryConfig::new(a1p1(), 1)
    }
}

/// A request the machine sent, decoded.
#[derive(Debug, Clone)]
struct Sent {
    /// When, after the start.
    at: Duration,
    transmit: Transmit,
    message: Message,
}

impl Sent {
    fn id(&self) -> TransactionId {
        self.message.transaction_id
    }

    fn local_port(&self) -> u16 {
        self.transmit
            .source
            .expect("discovery names its port")
            .port()
    }

    fn change(&self) -> (bool, bool) {
        self.message
            .attributes
            .change_request
            .map_or((false, false), |c| (c.change_ip, c.change_port))
    }
}

struct Harness {
    d: Discovery,
    now: Instant,
    start: Instant,
    buf: Vec<u8>,
    sent: Vec<Sent>,
    events: Vec<Event>,
}

impl Harness {
    fn new(config: DiscoveryConfig) -> Self {
        let now = epoch();
        let mut h = Self {
            d: Discovery::new(config),
            now,
            start: now,
            buf: vec![0; 65_535],
            sent: Vec::new(),
            events: Vec::new(),
        };
        h.d.start(now);
        h.drain();
        h
    }

    /// The driving contract: transmits, then events.
    fn drain(&mut self) {
        while let Some(transmit) = self.d.poll_transmit(self.now, &mut self.buf) {
            let message = Message::decode(&self.buf[..transmit.len]).expect("valid STUN");
            assert_eq!(
                (message.class, message.method),
                (Class::Request, Method::BINDING)
            );
            let at = self.now - self.start;
            self.sent.push(Sent {
                at,
                transmit,
                message,
            });
        }
        while let Some(event) = self.d.poll_event() {
            self.events.push(event);
        }
    }

    /// Runs the machine's timers up to `at` after the start.
    fn run_to(&mut self, at: Duration) {
        let until = self.start + at;
        while let Some(due) = self.d.poll_timeout().filter(|&due| due <= until) {
            assert!(due >= self.now, "deadlines never lie in the past");
            self.now = due;
            self.d.handle_timeout(due);
            self.drain();
        }
        self.now = self.now.max(until);
    }

    fn deliver(&mut self, source: SocketAddr, local: SocketAddr, bytes: &[u8]) {
        let packet = Receive {
            source,
            local,
            payload: bytes,
        };
        if self.d.accepts(&packet) {
            self.d.handle_packet(self.now, packet);
        }
        self.drain();
    }

    /// Answers `request` from `from` with a success carrying `mapped` and `other`.
    fn answer(
        &mut self,
        request: &Sent,
        from: SocketAddr,
        mapped: SocketAddr,
        other: Option<SocketAddr>,
    ) {
        let response = BindingResponse {
            transaction_id: request.id(),
            xor_mapped: Some(mapped),
            mapped: Some(mapped),
            response_origin: Some(from),
            other_address: other,
            ..BindingResponse::default()
        };
        self.deliver_response(&response, from, local(request.local_port()));
    }

    fn deliver_response(&mut self, response: &BindingResponse, from: SocketAddr, to: SocketAddr) {
        let mut bytes = vec![0u8; 1500];
        let len = response.encode(&mut bytes).unwrap();
        self.deliver(from, to, &bytes[..len]);
    }

    /// The last request sent to `destination` from local port `port` with these CHANGE-REQUEST
    /// flags.
    fn request(&self, port: u16, destination: SocketAddr, change: (bool, bool)) -> Sent {
        self.sent
            .iter()
            .rev()
            .find(|s| {
                s.local_port() == port
                    && s.transmit.destination == destination
                    && s.change() == change
            })
            .cloned()
            .unwrap_or_else(|| panic!("no request from {port} to {destination} {change:?}"))
    }

    fn report(&self) -> &Report {
        self.events
            .iter()
            .find_map(|e| match e {
                Event::Done(report) => Some(report),
                _ => None,
            })
            .expect("a report")
    }

    fn mapped_events(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Mapped { .. }))
            .count()
    }

    /// Answers test I as a two-address server behind which we are NATed at [`x1`].
    fn pass_test_i(&mut self) {
        let test_i = self.request(FIRST, a1p1(), (false, false));
        self.answer(&test_i, a1p1(), x1(), Some(a2p2()));
        assert_eq!(self.mapped_events(), 1);
    }
}

#[test]
fn test_i_goes_from_the_mapping_port_to_the_primary_address() {
    let h = Harness::new(config());
    assert_eq!(h.sent.len(), 1, "one question at a time to start with");
    let sent = &h.sent[0];
    assert_eq!(sent.transmit.destination, a1p1());
    assert_eq!(sent.transmit.source, Some(addr("0.0.0.0:40000")));
    assert_eq!(sent.change(), (false, false));
    assert_eq!(sent.message.cookie, Cookie::Magic);
}

#[test]
fn forged_and_unknown_transaction_ids_are_ignored() {
    let mut h = Harness::new(config());
    let test_i = h.sent[0].clone();
    // Right source, right port, wrong ID.
    let mut forged = test_i.clone();
    forged.message.transaction_id = TransactionId::new([0xAB; 12]);
    h.answer(&forged, a1p1(), addr("192.0.2.66:1"), Some(a2p2()));
    // Our ID under a classic (RFC 3489) cookie is a different 128-bit ID.
    let classic = BindingResponse {
        transaction_id: test_i.id(),
        cookie: Cookie::Classic([1, 2, 3, 4]),
        mapped: Some(x1()),
        ..BindingResponse::default()
    };
    h.deliver_response(&classic, a1p1(), local(FIRST));
    assert_eq!(h.d.stats().unknown_transaction, 2);
    assert_eq!(h.mapped_events(), 0, "nothing settled");
    // The real answer still counts.
    h.answer(&test_i, a1p1(), x1(), Some(a2p2()));
    assert!(matches!(
        h.events[0],
        Event::Mapped { mapped, .. } if mapped == x1()
    ));
}

#[test]
fn answers_from_an_unexpected_source_or_port_are_ignored_and_retransmission_goes_on() {
    let mut h = Harness::new(config());
    let test_i = h.sent[0].clone();
    h.answer(&test_i, a2p2(), x1(), Some(a2p2()));
    h.answer(&test_i, addr("192.0.2.9:3478"), x1(), Some(a2p2()));
    let response = BindingResponse {
        transaction_id: test_i.id(),
        xor_mapped: Some(x1()),
        ..BindingResponse::default()
    };
    h.deliver_response(&response, a1p1(), local(FIRST + port::FIRST_SAMPLE));
    assert_eq!(h.d.stats().wrong_source, 2);
    assert_eq!(h.d.stats().wrong_local, 1);
    assert_eq!(h.mapped_events(), 0);
    // The transaction is still alive: it retransmits at 250 ms with the same ID, and a second
    // transaction started half an RTO after the first.
    h.run_to(Duration::from_millis(250));
    let sent: Vec<(u128, bool)> = h
        .sent
        .iter()
        .map(|s| (s.at.as_millis(), s.id() == test_i.id()))
        .collect();
    assert_eq!(sent, [(0, true), (125, false), (250, true)]);
    h.answer(&test_i, a1p1(), x1(), Some(a2p2()));
    assert_eq!(h.mapped_events(), 1);
    assert_eq!(h.d.stats().answered_after_retry, 1);
}

#[test]
fn a_server_ignoring_change_request_does_not_look_like_endpoint_independent_filtering() {
    let mut h = Harness::new(config());
    h.pass_test_i();
    h.run_to(Duration::from_millis(600));
    let filtering_ii = h.request(FIRST + 1, a1p1(), (true, true));
    let filtering_iii = h.request(FIRST + 1, a1p1(), (false, true));
    // A server that ignores CHANGE-REQUEST answers from where it was asked.
    h.answer(&filtering_ii, a1p1(), x1(), Some(a2p2()));
    h.answer(&filtering_iii, a1p1(), x1(), Some(a2p2()));
    assert_eq!(h.d.stats().wrong_source, 2);
    // The mapping tests say EIM.
    let ii = h.request(FIRST, a2p1(), (false, false));
    h.answer(&ii, a2p1(), x1(), Some(a2p2()));
    let iii = h.request(FIRST, a2p2(), (false, false));
    h.answer(&iii, a2p2(), x1(), Some(a2p2()));
    h.run_to(Duration::from_secs(30));
    // The samples go unanswered too; the report is still made.
    let report = h.report();
    assert_eq!(report.mapping, Test::Tested(Mapping::EndpointIndependent));
    assert_eq!(
        report.filtering,
        Test::Tested(Filtering::AddressAndPortDependent),
        "answers from the unchanged address are not filtering answers"
    );
    assert_eq!(
        report.port_pattern,
        Test::NotTested(Untested::TooFewSamples)
    );
    assert!(!report.is_complete());
}

#[test]
fn answers_from_the_changed_addresses_read_as_filtering() {
    for (answer_ii, answer_iii, expected) in [
        (true, true, Filtering::EndpointIndependent),
        (true, false, Filtering::EndpointIndependent),
        (false, true, Filtering::AddressDependent),
        (false, false, Filtering::AddressAndPortDependent),
    ] {
        let mut h = Harness::new(config());
        h.pass_test_i();
        h.run_to(Duration::from_millis(600));
        if answer_ii {
            let ii = h.request(FIRST + 1, a1p1(), (true, true));
            h.answer(&ii, a2p2(), x1(), Some(a2p2()));
        }
        if answer_iii {
            let iii = h.request(FIRST + 1, a1p1(), (false, true));
            h.answer(&iii, a1p2(), x1(), Some(a2p2()));
        }
        h.run_to(Duration::from_secs(30));
        assert_eq!(h.report().filtering, Test::Tested(expected));
    }
}

#[test]
fn an_error_response_to_change_request_leaves_filtering_untested() {
    let mut h = Harness::new(config());
    h.pass_test_i();
    h.run_to(Duration::from_millis(600));
    let ii = h.request(FIRST + 1, a1p1(), (true, true));
    let refusal = BindingResponse {
        transaction_id: ii.id(),
        error: Some(ErrorCode::new(ErrorCode::UNKNOWN_ATTRIBUTE)),
        unknown_attributes: vec![crate::wire::attribute_type::CHANGE_REQUEST],
        ..BindingResponse::default()
    };
    // Errors come from where the request went, not from the changed address.
    h.deliver_response(&refusal, a1p1(), local(FIRST + 1));
    h.run_to(Duration::from_secs(30));
    assert_eq!(
        h.report().filtering,
        Test::NotTested(Untested::ServerRefused(420))
    );
}

#[test]
fn late_and_duplicate_answers_are_counted_as_late() {
    let mut h = Harness::new(config());
    let test_i = h.sent[0].clone();
    h.answer(&test_i, a1p1(), x1(), Some(a2p2()));
    h.answer(&test_i, a1p1(), x1(), Some(a2p2()));
    assert_eq!(h.d.stats().late, 1);
    assert_eq!(h.d.stats().accepted, 1);
    assert_eq!(h.mapped_events(), 1);
}

#[test]
fn malformed_datagrams_are_counted_and_dropped() {
    let mut h = Harness::new(config());
    let test_i = h.sent[0].clone();
    // STUN by its first byte, but the length field lies.
    let mut bytes = vec![0u8; 1500];
    let len = BindingResponse {
        transaction_id: test_i.id(),
        xor_mapped: Some(x1()),
        ..BindingResponse::default()
    }
    .encode(&mut bytes)
    .unwrap();
    bytes[3] ^= 0x04;
    h.deliver(a1p1(), local(FIRST), &bytes[..len]);
    // Twenty bytes of header with the top bits clear and nothing valid after.
    h.deliver(a1p1(), local(FIRST), &[0x01; 27]);
    // A success without any mapped address is no answer either.
    let empty = BindingResponse {
        transaction_id: test_i.id(),
        ..BindingResponse::default()
    };
    h.deliver_response(&empty, a1p1(), local(FIRST));
    // An answer naming the unspecified address is refused the same way.
    h.answer(&test_i, a1p1(), addr("0.0.0.0:40000"), None);
    assert_eq!(h.d.stats().malformed, 4);
    assert_eq!(h.mapped_events(), 0);
    // Not STUN at all: the machine does not accept it.
    let quic = [0xC0u8, 0, 0, 0, 1, 2, 3];
    let packet = Receive {
        source: a1p1(),
        local: local(FIRST),
        payload: &quic,
    };
    assert!(!h.d.accepts(&packet));
    assert_eq!(h.d.stats().received, 4);
}

#[test]
fn only_stun_on_its_own_ports_is_accepted() {
    let d = Discovery::new(config());
    let stun = [0u8; 20];
    let accepts = |port: u16, payload: &[u8]| {
        d.accepts(&Receive {
            source: a1p1(),
            local: local(port),
            payload,
        })
    };
    assert!(accepts(FIRST, &stun));
    assert!(accepts(FIRST + 1, &stun));
    assert!(
        !accepts(FIRST + 2, &stun),
        "the lifetime ports only with the test on"
    );
    assert!(accepts(FIRST + port::FIRST_SAMPLE + 1, &stun));
    assert!(
        !accepts(FIRST + port::FIRST_SAMPLE + 2, &stun),
        "two samples"
    );
    assert!(!accepts(FIRST - 1, &stun));
    assert!(!accepts(FIRST, &[0x17; 20]), "DTLS");
    assert!(!accepts(FIRST, &[0; 19]), "shorter than a STUN header");
    assert_eq!(
        config().local_ports(),
        [FIRST, FIRST + 1, FIRST + 16, FIRST + 17]
    );
}

#[test]
fn without_the_local_ip_a_public_host_cannot_tell_it_is_not_natted() {
    let public = addr("203.0.113.1:40000");
    for (own, seen_local, translated) in [
        (vec![], addr("0.0.0.0:40000"), true),
        (vec![public.ip()], addr("0.0.0.0:40000"), false),
        (vec![], public, false),
    ] {
        let mut h = Harness::new(DiscoveryConfig {
            own_addresses: own,
            ..config()
        });
        let test_i = h.sent[0].clone();
        let response = BindingResponse {
            transaction_id: test_i.id(),
            xor_mapped: Some(public),
            other_address: Some(a2p2()),
            ..BindingResponse::default()
        };
        h.deliver_response(&response, a1p1(), seen_local);
        h.run_to(Duration::from_secs(30));
        assert_eq!(h.report().nat, Test::Tested(translated), "{seen_local}");
    }
}

#[test]
fn one_transaction_per_test_follows_the_retransmission_timeline() {
    let mut h = Harness::new(DiscoveryConfig {
        transactions_per_test: 1,
        ..config()
    });
    h.run_to(Duration::from_secs(10));
    let at: Vec<u128> = h.sent.iter().map(|s| s.at.as_millis()).collect();
    // RFC 5389 §7.2.1 with RTO 250 ms and Rc 5.
    assert_eq!(at, [0, 250, 750, 1750, 3750]);
    let report = h.report();
    assert_eq!(report.behaviour, Behaviour::UdpBlocked);
    // 250 ms · (1 + 2 + 4 + 8) + 4 · 250 ms.
    assert_eq!(report.duration, Duration::from_millis(4750));
    assert_eq!(h.d.poll_timeout(), None);
}

#[test]
fn hairpinning_is_our_own_request_arriving_on_the_mapping_port() {
    let mut h = Harness::new(config());
    h.pass_test_i();
    h.run_to(Duration::from_millis(600));
    let hairpin = h.request(FIRST, x1(), (false, false));
    // A response with the hairpin request's ID is nobody's answer.
    h.answer(&hairpin, x1(), x1(), None);
    assert_eq!(h.d.stats().unexpected, 1);
    // The request itself, arriving on another port, is not it either.
    let bytes = hairpin.message.to_bytes(None).unwrap();
    h.deliver(addr("203.0.113.1:40007"), local(FIRST + 1), &bytes);
    assert_eq!(h.d.stats().wrong_local, 1);
    // On the mapping port, from whichever mapping the NAT used, it is.
    h.deliver(addr("203.0.113.1:40007"), local(FIRST), &bytes);
    h.run_to(Duration::from_secs(30));
    assert_eq!(h.report().hairpinning, Test::Tested(true));
    // Someone else's request is unexpected.
    let mut other = hairpin.message.clone();
    other.transaction_id = TransactionId::new([3; 12]);
    let before = h.d.stats().unexpected;
    h.deliver(a1p1(), local(FIRST), &other.to_bytes(None).unwrap());
    assert_eq!(h.d.stats().unexpected, before + 1);
}

impl Harness {
    /// The provisional report, if one came, and how many came.
    fn provisional(&self) -> (Option<&Report>, usize) {
        let all: Vec<&Report> = self
            .events
            .iter()
            .filter_map(|e| match e {
                Event::Provisional(report) => Some(report),
                _ => None,
            })
            .collect();
        (all.first().copied(), all.len())
    }
}

#[test]
fn a_provisional_report_comes_with_the_mapping_and_assumes_the_worst_filtering() {
    let mut h = Harness::new(config());
    h.pass_test_i();
    h.run_to(Duration::from_millis(150));
    // Mapping II answers with X1: endpoint-independent. Filtering stays silent.
    let ii = h.request(FIRST, a2p1(), (false, false));
    h.answer(&ii, a2p1(), x1(), Some(a2p2()));
    // Not before the filtering tests were asked and had the time an answer takes.
    assert_eq!(h.provisional().1, 0);
    h.run_to(Duration::from_millis(600));
    let (provisional, count) = h.provisional();
    let provisional = provisional.expect("a provisional report once the mapping is known");
    assert_eq!(count, 1);
    assert_eq!(
        provisional.mapping,
        Test::Tested(Mapping::EndpointIndependent)
    );
    assert_eq!(
        provisional.filtering,
        Test::NotTested(Untested::Pending),
        "the filtering tests are still running"
    );
    assert!(!provisional.is_complete());
    assert!(matches!(
        provisional.behaviour,
        Behaviour::Nat {
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::AddressAndPortDependent,
            ..
        }
    ));
    // Hairpinning, the last question, went out 500 ms in (paced at 100 ms); test I's round
    // trip here is 0, so the grace is 1 ms.
    assert_eq!(provisional.duration, Duration::from_millis(501));
    assert!(
        !h.events.iter().any(|e| matches!(e, Event::Done(_))),
        "the filtering silence is not over yet"
    );
    h.run_to(Duration::from_secs(30));
    // Filtering ends as the provisional report assumed; nothing else provisional came.
    assert_eq!(h.provisional().1, 1);
    assert_eq!(
        h.report().filtering,
        Test::Tested(Filtering::AddressAndPortDependent)
    );
    let done_at = h.events.iter().position(|e| matches!(e, Event::Done(_)));
    let provisional_at = h
        .events
        .iter()
        .position(|e| matches!(e, Event::Provisional(_)));
    assert!(provisional_at < done_at);
}

#[test]
fn a_provisional_report_for_a_symmetric_nat_waits_for_the_port_pattern_only() {
    let mut h = Harness::new(config());
    h.pass_test_i();
    h.run_to(Duration::from_millis(250));
    // Address-and-port-dependent mapping: II and III each see a new port.
    let ii = h.request(FIRST, a2p1(), (false, false));
    h.answer(&ii, a2p1(), addr("203.0.113.1:40010"), Some(a2p2()));
    let iii = h.request(FIRST, a2p2(), (false, false));
    h.answer(&iii, a2p2(), addr("203.0.113.1:40011"), Some(a2p2()));
    assert_eq!(h.provisional().1, 0, "the port pattern is still unknown");
    // The samples start while filtering is still silent, and are answered sequentially.
    for i in 0..2u16 {
        while !h.sent.iter().any(|s| s.local_port() == FIRST + 16 + i) {
            assert!(
                h.now - h.start < Duration::from_secs(2),
                "sample {i} never asked"
            );
            h.run_to(h.now - h.start + Duration::from_millis(10));
        }
        let sample = h.request(FIRST + 16 + i, a1p1(), (false, false));
        h.answer(
            &sample,
            a1p1(),
            addr(&format!("203.0.113.1:{}", 41_000 + i)),
            None,
        );
    }
    let (provisional, count) = h.provisional();
    let provisional = provisional.expect("a provisional report once the samples are in");
    assert_eq!(count, 1);
    assert_eq!(
        provisional.port_pattern,
        Test::Tested(PortPattern::Sequential { delta: 1 })
    );
    assert_eq!(provisional.filtering, Test::NotTested(Untested::Pending));
    // Paced at ten transactions a second, behind the filtering tests' second transactions:
    // long before their silence counts (4.75 s).
    assert!(provisional.duration < Duration::from_millis(1_500));
    assert!(!h.events.iter().any(|e| matches!(e, Event::Done(_))));
    h.run_to(Duration::from_secs(30));
    assert_eq!(
        h.report().port_pattern,
        Test::Tested(PortPattern::Sequential { delta: 1 })
    );
    assert!(h.report().is_complete());
}

#[test]
fn a_remembered_behaviour_is_provisional_at_test_i_on_the_same_network_only() {
    let known = Behaviour::Nat {
        mapping: Mapping::AddressDependent,
        filtering: Filtering::AddressDependent,
        ports: PortPattern::Sequential { delta: 2 },
        hairpinning: false,
    };
    for (public, recalled) in [(x1().ip(), true), (addr("203.0.113.77:1").ip(), false)] {
        let mut h = Harness::new(DiscoveryConfig {
            remembered: Some(Remembered {
                public,
                behaviour: known,
            }),
            ..config()
        });
        h.pass_test_i();
        let (provisional, _) = h.provisional();
        if !recalled {
            assert!(provisional.is_none(), "another network: nothing remembered");
            continue;
        }
        let provisional = provisional.expect("at test I");
        assert_eq!(provisional.behaviour, known);
        assert_eq!(provisional.mapping, Test::NotTested(Untested::Pending));
        assert_eq!(provisional.duration, Duration::ZERO);
        // The tests run on, and say what they find (here: nothing answers but test I).
        h.run_to(Duration::from_secs(30));
        assert_eq!(h.provisional().1, 1);
        assert_ne!(h.report().behaviour, known);
    }
}

#[test]
fn no_provisional_report_when_everything_settles_at_once() {
    // No usable other address: test I is the whole behaviour part, and the samples follow.
    let mut h = Harness::new(DiscoveryConfig {
        port_samples: 0,
        hairpinning: false,
        ..config()
    });
    let test_i = h.request(FIRST, a1p1(), (false, false));
    h.answer(&test_i, a1p1(), x1(), None);
    h.run_to(Duration::from_secs(30));
    assert_eq!(h.provisional().1, 0);
    assert!(h.report().mapping.untested() == Some(Untested::NoOtherAddress));
}

proptest! {
    /// No input panics, and every datagram lands in exactly one counter.
    #[test]
    fn arbitrary_datagrams_never_panic_and_are_all_counted(
        datagrams in prop::collection::vec(
            (
                prop::collection::vec(any::<u8>(), 0..120),
                0u16..20,
                any::<bool>(),
                0usize..4,
            ),
            0..40,
        ),
    ) {
        let mut h = Harness::new(config());
        let sources = [a1p1(), a2p2(), a1p2(), addr("192.0.2.1:9")];
        for (mut bytes, port_offset, use_id, source) in datagrams {
            // Half of them carry the ID of a request we sent, so they get past the lookup.
            if use_id && bytes.len() >= 20 {
                if let Some(sent) = h.sent.last() {
                    bytes[8..20].copy_from_slice(sent.id().as_bytes());
                    bytes[4..8].copy_from_slice(&crate::wire::MAGIC_COOKIE.to_be_bytes());
                }
            }
            h.deliver(sources[source], local(FIRST + port_offset), &bytes);
            h.run_to(h.now - h.start + Duration::from_millis(300));
        }
        let s = *h.d.stats();
        prop_assert_eq!(
            s.received,
            s.accepted + s.late + s.unknown_transaction + s.wrong_source + s.wrong_local
                + s.malformed + s.unexpected
        );
    }
}

#[test]
fn test_i_unanswered_for_long_enough_is_assumed_blocked_and_corrected_by_an_answer() {
    let assume = DiscoveryConfig {
        assume_blocked_after: Some(Duration::from_millis(500)),
        ..config()
    };
    // Silence all along: the assumption at 500 ms, the verdict at test I's end, same behaviour.
    let mut h = Harness::new(assume.clone());
    h.run_to(Duration::from_millis(499));
    assert_eq!(h.provisional().1, 0);
    h.run_to(Duration::from_millis(500));
    let (report, count) = h.provisional();
    assert_eq!(count, 1);
    let report = report.expect("one").clone();
    assert_eq!(report.behaviour, Behaviour::UdpBlocked);
    assert_eq!(report.nat, Test::NotTested(Untested::Pending));
    assert_eq!(report.duration, Duration::from_millis(500));
    h.run_to(Duration::from_secs(30));
    assert_eq!(h.report().behaviour, Behaviour::UdpBlocked);
    assert_eq!(h.report().nat, Test::NotTested(Untested::UdpBlocked));
    assert_eq!(h.provisional().1, 1);

    // An answer after the assumption: the rest runs as without it, and what it finds is
    // reported (here only at the end: no behaviour question is answered, so nothing is
    // plannable before).
    let mut h = Harness::new(assume.clone());
    h.run_to(Duration::from_millis(600));
    assert_eq!(h.provisional().1, 1);
    h.pass_test_i();
    h.run_to(Duration::from_secs(30));
    assert_eq!(h.provisional().1, 1);
    assert_eq!(h.report().nat, Test::Tested(true));
    assert_ne!(h.report().behaviour, Behaviour::UdpBlocked);

    // An answer before it: no assumption at all.
    let mut h = Harness::new(assume);
    h.pass_test_i();
    h.run_to(Duration::from_secs(30));
    assert!(
        h.events
            .iter()
            .all(|e| !matches!(e, Event::Provisional(r) if r.behaviour == Behaviour::UdpBlocked))
    );
}
