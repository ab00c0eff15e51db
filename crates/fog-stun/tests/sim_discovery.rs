//! The simulator proof of RFC 5780 discovery: for every NAT preset, for random single NATs, through
//! 10 % loss and through nested NATs, the [`Discovery`] machine, talking real STUN to a
//! two-address [`Server`], reports the behaviour the network was built with (RFC 4787 §4–6 as
//! RFC 5780 §4.3–4.5 observe them, plus the port pattern); with a one-address server it reports
//! what it can and says what it could not test.
//!
//! The server is a host on the internet with 198.51.100.1 and 198.51.100.2 (RFC 5737), ports 3478
//! and 3479, 5 ms away; the client sits behind `fog_sim`'s presets (1 ms uplinks, 0.5 ms LANs).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use fog_core::SansIo as _;
use fog_core::nat::{Behaviour, Filtering, Mapping, PortPattern};
use fog_sim::behaviour::PortAssignment;
use fog_sim::link::LinkConfig;
use fog_sim::nat::NatConfig;
use fog_sim::presets::Preset;
use fog_sim::{NodeId, Sim};
use fog_stun::discovery::{Discovery, DiscoveryConfig, Event, Report, Step, Test, Untested};
use fog_stun::server::{Server, ServerConfig};
use proptest::prelude::*;

const A1: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 1));
const A2: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 2));
const P1: u16 = 3478;
const P2: u16 = 3479;
/// The preset site's public address (`Preset::attach` with site 1).
const PUBLIC: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1));
/// No run may take longer than this in virtual time.
const CAP: Duration = Duration::from_secs(120);

use Filtering::{
    AddressAndPortDependent as Apdf, AddressDependent as Adf, EndpointIndependent as Eif,
};
use Mapping::{
    AddressAndPortDependent as Apdm, AddressDependent as Adm, EndpointIndependent as Eim,
};

fn a1p1() -> SocketAddr {
    SocketAddr::new(A1, P1)
}

/// Attaches the STUN server: two IPs × two ports, or only A1:P1.
fn add_server(sim: &mut Sim, two_addresses: bool) {
    let host = sim.add_host(
        "stun",
        NodeId::INTERNET,
        &[A1, A2],
        LinkConfig::with_latency(Duration::from_millis(5)),
    );
    let mut config = ServerConfig::new(a1p1());
    if two_addresses {
        config = config.with_alternate(A2, P2);
    }
    sim.set_machine(host, P1, Server::new(config));
}

/// Runs discovery on `host` until it reports; returns the report and every event before it.
fn discover(sim: &mut Sim, host: NodeId, config: DiscoveryConfig) -> (Report, Vec<Event>) {
    let port = config.first_port;
    sim.set_machine(host, port, Discovery::new(config));
    let deadline = sim.now() + CAP;
    let mut events = Vec::new();
    loop {
        for (_, event) in sim.take_events::<Event>(host) {
            if let Event::Done(report) = event {
                assert!(
                    sim.machine::<Discovery>(host).poll_timeout().is_none(),
                    "nothing is left to do after the report"
                );
                return (report, events);
            }
            events.push(event);
        }
        assert!(sim.now() < deadline, "no report within {CAP:?}");
        assert!(sim.step(), "the network went quiet without a report");
    }
}

/// Discovery from behind `preset` on a fresh network.
fn discover_preset(preset: Preset, seed: u64, link: LinkConfig, two_addresses: bool) -> Report {
    let mut sim = Sim::new(seed);
    let site = preset.attach(&mut sim, "client", 1, link);
    add_server(&mut sim, two_addresses);
    discover(&mut sim, site.host, DiscoveryConfig::new(a1p1(), seed)).0
}

fn lossy() -> LinkConfig {
    LinkConfig {
        loss: 0.1,
        ..LinkConfig::default()
    }
}

/// RFC 4787 §4–6 via RFC 5780 §4.3–4.5: every preset is reported as configured, completely.
#[test]
fn every_preset_is_reported_as_configured() {
    for preset in Preset::ALL.into_iter().chain(Preset::EXTRA) {
        for seed in [1, 2, 3] {
            let report = discover_preset(preset, seed, LinkConfig::default(), true);
            let expected = preset.behaviour();
            assert_eq!(report.behaviour, expected, "{preset}, seed {seed}");
            assert_eq!(report.classic_name, expected.classic_name());
            assert!(report.is_complete(), "{preset}, seed {seed}: {report:#?}");
            let s = report.stats;
            assert_eq!(
                (
                    s.wrong_source,
                    s.wrong_local,
                    s.malformed,
                    s.unknown_transaction
                ),
                (0, 0, 0, 0),
                "{preset}, seed {seed}"
            );
            // A clean path answers at the first request: no second transaction.
            assert_eq!(s.answered_after_retry, 0, "{preset}, seed {seed}");
            if let Behaviour::Nat { .. } = expected {
                assert_eq!(report.mapped.map(|m| m.ip()), Some(PUBLIC), "{preset}");
                assert_eq!(report.other_address, Some(SocketAddr::new(A2, P2)));
                assert_eq!(report.port_samples.len(), 6, "{preset}");
            }
            // The slowest case waits out three silent questions once: well under 10 s.
            assert!(
                report.duration < Duration::from_secs(10),
                "{preset}: {:?}",
                report.duration
            );
        }
    }
}

/// RFC 4787 §4–6 via RFC 5780 §4.3–4.5 through 10 % loss each way on the client's uplink: loss
/// is never read as behaviour, and every test still completes.
#[test]
fn every_preset_is_reported_as_configured_through_ten_percent_loss() {
    let mut retried = 0;
    for preset in Preset::ALL {
        for seed in 1..=100 {
            let report = discover_preset(preset, seed, lossy(), true);
            assert_eq!(
                report.behaviour,
                preset.behaviour(),
                "{preset}, seed {seed}, 10 % loss: {report:#?}"
            );
            assert!(report.is_complete(), "{preset}, seed {seed}: {report:#?}");
            retried += report.stats.answered_after_retry;
        }
    }
    assert!(retried > 20, "the loss was felt: {retried} retried answers");
}

/// Nested NATs report the outermost effective behaviour (`Behaviour::behind`): the carrier-grade
/// preset, and a sequential symmetric NAT behind a port-preserving full cone, whose pattern shows
/// through it.
#[test]
fn nested_nats_report_the_outermost_effective_behaviour() {
    let report = discover_preset(Preset::CgnatBehindHome, 9, LinkConfig::default(), true);
    let [home, cgn] = <[NatConfig; 2]>::try_from(Preset::CgnatBehindHome.nats()).unwrap();
    assert_eq!(report.behaviour, home.behaviour().behind(cgn.behaviour()));
    assert_eq!(
        report.behaviour,
        Behaviour::Nat {
            mapping: Eim,
            filtering: Apdf,
            ports: PortPattern::Random,
            hairpinning: true
        }
    );

    for seed in [1, 2] {
        let mut sim = Sim::new(seed);
        let outer = NatConfig::new(Eim, Eif);
        let inner = NatConfig {
            ports: PortAssignment::Sequential { delta: 1 },
            ..NatConfig::new(Apdm, Adf)
        };
        let expected = inner.behaviour().behind(outer.behaviour());
        let link = LinkConfig::default();
        let outer = sim.add_nat("outer", NodeId::INTERNET, PUBLIC, outer, link.clone());
        let inner_ip = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));
        let inner = sim.add_nat("inner", outer, inner_ip, inner, link.clone());
        let host_ip = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2));
        let host = sim.add_host("client", inner, &[host_ip], link);
        add_server(&mut sim, true);
        let (report, _) = discover(&mut sim, host, DiscoveryConfig::new(a1p1(), seed));
        assert_eq!(
            report.behaviour,
            Behaviour::Nat {
                mapping: Apdm,
                filtering: Adf,
                ports: PortPattern::Sequential { delta: 1 },
                hairpinning: false
            }
        );
        assert_eq!(report.behaviour, expected, "seed {seed}");
    }
}

/// With a one-address server (no OTHER-ADDRESS) mapping and filtering cannot run, and the report
/// says so; the mapped address, the port pattern and hairpinning are still measured.
#[test]
fn a_one_address_server_reports_what_it_can() {
    for (preset, ports) in [
        (Preset::PortRestrictedCone, PortPattern::Preserved),
        (
            Preset::SymmetricSequential,
            PortPattern::Sequential { delta: 1 },
        ),
        (Preset::SymmetricRandom, PortPattern::Random),
    ] {
        let seed = 5;
        let config = DiscoveryConfig::new(a1p1(), seed);
        let mapping_port = config.first_port;
        let report = discover_preset(preset, seed, LinkConfig::default(), false);
        assert_eq!(report.other_address, None, "{preset}");
        assert_eq!(report.nat, Test::Tested(true));
        assert_eq!(report.mapping, Test::NotTested(Untested::NoOtherAddress));
        assert_eq!(report.filtering, Test::NotTested(Untested::NoOtherAddress));
        assert_eq!(report.port_pattern, Test::Tested(ports), "{preset}");
        assert_eq!(report.hairpinning, Test::Tested(false));
        assert!(!report.is_complete());
        let mapped = report.mapped.expect("test I was answered");
        assert_eq!(mapped.ip(), PUBLIC);
        if ports == PortPattern::Preserved {
            assert_eq!(mapped.port(), mapping_port);
        }
        // What was not measured is assumed at its most restrictive.
        assert_eq!(
            report.behaviour,
            Behaviour::Nat {
                mapping: Apdm,
                filtering: Apdf,
                ports,
                hairpinning: false
            },
            "{preset}"
        );
    }

    let report = discover_preset(Preset::OpenInternet, 5, LinkConfig::default(), false);
    assert_eq!(report.nat, Test::Tested(false));
    assert_eq!(
        report.mapping,
        Test::Tested(Eim),
        "RFC 5780 §4.3: no NAT is EIM"
    );
    assert_eq!(report.filtering, Test::NotTested(Untested::NoOtherAddress));
    assert_eq!(report.port_pattern, Test::NotTested(Untested::NoNat));
    assert_eq!(report.behaviour, Behaviour::Firewall { filtering: Apdf });
}

/// RFC 5780 §4.2: no answer to test I means UDP is blocked, and nothing else runs.
#[test]
fn udp_blocked_is_reported_after_test_i_times_out() {
    let report = discover_preset(Preset::UdpBlocked, 3, LinkConfig::default(), true);
    assert_eq!(report.behaviour, Behaviour::UdpBlocked);
    assert_eq!(report.classic_name, "UDP blocked");
    assert_eq!(report.mapped, None);
    for why in [
        report.nat.untested(),
        report.mapping.untested(),
        report.filtering.untested(),
        report.port_pattern.untested(),
        report.hairpinning.untested(),
    ] {
        assert_eq!(why, Some(Untested::UdpBlocked));
    }
    assert!(report.is_complete(), "nothing that applies was left out");
    // Two transactions of five requests each; the second starts 125 ms after the first and
    // times out 4.75 s after its own start.
    assert_eq!(report.stats.transactions, 2);
    assert_eq!(report.stats.requests, 10);
    assert_eq!(report.stats.timed_out, 2);
    assert_eq!(report.duration, Duration::from_millis(4875));
}

/// The progress events come in order, end at their total, and precede the report.
#[test]
fn progress_events_count_up_to_their_total() {
    let mut sim = Sim::new(11);
    let site = Preset::SymmetricSequential.attach(&mut sim, "client", 1, LinkConfig::default());
    add_server(&mut sim, true);
    let config = DiscoveryConfig {
        lifetime: Some(Duration::from_secs(10)),
        ..DiscoveryConfig::new(a1p1(), 11)
    };
    let (report, events) = discover(&mut sim, site.host, config);
    let steps: Vec<(Step, u32, u32)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Progress { step, done, total } => Some((*step, *done, *total)),
            _ => None,
        })
        .collect();
    assert_eq!(
        steps,
        [
            (Step::Connectivity, 1, 6),
            (Step::Mapping, 2, 6),
            (Step::Filtering, 3, 6),
            (Step::Hairpinning, 4, 6),
            (Step::PortPattern, 5, 6),
            (Step::Lifetime, 6, 6),
        ]
    );
    assert!(matches!(events[0], Event::Mapped { .. }));
    // The lifetime test (RFC 5780 §4.6): Linux conntrack keeps an answered binding 120 s.
    let lifetime = *report.lifetime.tested().expect("the lifetime test ran");
    assert!(lifetime.alive);
    assert!(lifetime.idle >= Duration::from_secs(10));
}

/// RFC 5780 §4.6: a binding left idle past the NAT's timeout is reported expired.
#[test]
fn an_expired_binding_is_reported_by_the_lifetime_test() {
    for (idle, alive) in [
        (Duration::from_secs(20), true),
        (Duration::from_secs(40), false),
    ] {
        let mut sim = Sim::new(12);
        let nat = NatConfig {
            timeouts: fog_sim::nat::Timeouts {
                unreplied: Duration::from_secs(30),
                established: Duration::from_secs(30),
            },
            ..NatConfig::new(Eim, Apdf)
        };
        let nat = sim.add_nat("nat", NodeId::INTERNET, PUBLIC, nat, LinkConfig::default());
        let host_ip = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2));
        let host = sim.add_host("client", nat, &[host_ip], LinkConfig::default());
        add_server(&mut sim, true);
        let config = DiscoveryConfig {
            lifetime: Some(idle),
            ..DiscoveryConfig::new(a1p1(), 12)
        };
        let (report, _) = discover(&mut sim, host, config);
        let lifetime = *report.lifetime.tested().expect("the lifetime test ran");
        assert_eq!(lifetime.alive, alive, "{idle:?} idle: {lifetime:?}");
        assert!(lifetime.idle >= idle);
    }
}

/// The same seed gives the same report.
#[test]
fn the_same_seed_gives_the_same_report() {
    for preset in [Preset::SymmetricRandom, Preset::CgnatBehindHome] {
        let a = discover_preset(preset, 21, lossy(), true);
        let b = discover_preset(preset, 21, lossy(), true);
        assert_eq!(a, b, "{preset}");
    }
}

fn nat_configs() -> impl Strategy<Value = NatConfig> {
    let mapping = prop_oneof![Just(Eim), Just(Adm), Just(Apdm)];
    let filtering = prop_oneof![Just(Eif), Just(Adf), Just(Apdf)];
    let ports = prop_oneof![
        Just(PortAssignment::Preserve),
        prop::sample::select(vec![-3, -2, -1, 1, 2, 3])
            .prop_map(|delta| PortAssignment::Sequential { delta }),
        Just(PortAssignment::Random),
    ];
    (mapping, filtering, ports, any::<bool>(), any::<bool>()).prop_map(
        |(mapping, filtering, ports, hairpinning, preserve_parity)| NatConfig {
            ports,
            hairpinning,
            preserve_parity,
            ..NatConfig::new(mapping, filtering)
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// RFC 4787 §4–6 via RFC 5780 §4.3–4.5: any single NAT is reported as `config.behaviour()`,
    /// with the two limits of what an observer can see that `sim/tests/nat_behaviour.rs` states.
    #[test]
    fn any_single_nat_is_reported_as_configured(config in nat_configs(), seed in any::<u64>()) {
        let mut sim = Sim::new(seed);
        let nat = sim.add_nat("nat", NodeId::INTERNET, PUBLIC, config.clone(), LinkConfig::default());
        let host_ip = IpAddr::V4(Ipv4Addr::new(192, 168, 1, 2));
        let host = sim.add_host("client", nat, &[host_ip], LinkConfig::default());
        add_server(&mut sim, true);
        let (report, _) = discover(&mut sim, host, DiscoveryConfig::new(a1p1(), seed));
        prop_assert!(report.is_complete(), "{:#?}", report);
        let expected = config.behaviour();
        if let PortAssignment::Sequential { delta } = config.ports {
            // The counter wraps at the end of the range; samples straddling the wrap look random
            // to any observer, so such runs (a few in ten thousand) are discarded.
            let ports: Vec<u16> = report.port_samples.iter().map(|s| s.mapped.port()).collect();
            prop_assume!(!ports.windows(2).any(|w| w[0].abs_diff(w[1]) > 1000));
            // Consecutive sample ports alternate in parity: with an even delta and parity kept,
            // every other binding cannot take the next step and falls back, so the delta cannot
            // show. Everything else must still be exact.
            if config.preserve_parity && delta % 2 == 0 {
                let Behaviour::Nat { ports, .. } = report.behaviour else {
                    panic!("not a NAT: {report:?}");
                };
                prop_assert_ne!(ports, PortPattern::Sequential { delta });
                let Behaviour::Nat { mapping, filtering, hairpinning, .. } = expected else {
                    unreachable!("a translating config is a NAT");
                };
                prop_assert_eq!(
                    report.behaviour,
                    Behaviour::Nat { mapping, filtering, ports, hairpinning }
                );
                return Ok(());
            }
        }
        prop_assert_eq!(report.behaviour, expected, "samples {:?}", report.port_samples);
    }
}
