//! Fast start, in the simulator: a node offers as soon as discovery knows its mapping (and,
//! behind a NAT whose mapping is not endpoint-independent, its port pattern), assuming the
//! most restrictive result for the tests still running, and tells its peers when those end
//! with something else.
//!
//! Before, a node waited for the whole of discovery, whose filtering tests can only conclude
//! "filtered" after every retransmission went unanswered (4.75 s): these tests fail on that.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use fog_core::nat::{Behaviour, Filtering};
use fog_examples::scenario::{Profile, Scenario};
use fog_sim::presets::Preset;
use fogconnect::Event;

/// The filtering tests' silence: every transaction's retransmissions unanswered.
const FILTERING_SILENCE: Duration = Duration::from_millis(4_750);

fn first_at(events: &[(Instant, Event)], f: impl Fn(&Event) -> bool) -> Option<Instant> {
    events.iter().find(|(_, e)| f(e)).map(|(at, _)| *at)
}

#[test]
fn a_connect_at_start_has_its_direct_path_before_the_filtering_tests_end() {
    for (a, b) in [
        (Preset::PortRestrictedCone, Preset::PortRestrictedCone),
        (Preset::CgnatBehindHome, Preset::Firewall),
        // The sequential side's prediction waits for its port samples only.
        (Preset::SymmetricSequential, Preset::PortRestrictedCone),
        (Preset::PortRestrictedCone, Preset::SymmetricSequential),
    ] {
        let mut s = Scenario::new(a, b, 3, &Profile::default());
        let start = s.sim.now();
        // At once: the offer waits for what it needs, not for the whole of discovery.
        s.connect();
        s.run_for(Duration::from_secs(3));
        for i in 0..2 {
            let ready = first_at(&s.events[i], |e| matches!(e, Event::Ready { .. }))
                .unwrap_or_else(|| panic!("{a} × {b}: node {i} never ready"));
            assert!(
                ready - start < Duration::from_secs(1),
                "{a} × {b}: node {i} ready after {:?}",
                ready - start
            );
            let paths = s.paths(i);
            let (at, _, _, relayed) = *paths
                .first()
                .unwrap_or_else(|| panic!("{a} × {b}: node {i} has no path"));
            assert!(!relayed, "{a} × {b}: node {i} starts direct: {paths:?}");
            assert!(
                at - start < FILTERING_SILENCE / 2,
                "{a} × {b}: node {i}'s first path after {:?}",
                at - start
            );
        }
    }
}

#[test]
fn a_behaviour_less_restrictive_than_assumed_is_announced_when_discovery_ends() {
    // A restricted cone filters by address only: its filtering test II stays silent (4.75 s)
    // while test III is answered at once, so the node starts out assuming port-dependent
    // filtering and learns otherwise later.
    let mut s = Scenario::new(
        Preset::RestrictedCone,
        Preset::SymmetricRandom,
        5,
        &Profile::default(),
    );
    let start = s.sim.now();
    s.connect();
    s.run_for(Duration::from_secs(10));
    let ready = s.events[0].iter().find_map(|(at, e)| match e {
        Event::Ready { behaviour, .. } => Some((*at, *behaviour)),
        _ => None,
    });
    let (ready_at, assumed) = ready.expect("node A ready");
    assert!(ready_at - start < Duration::from_secs(1));
    assert!(
        matches!(
            assumed,
            Behaviour::Nat {
                filtering: Filtering::AddressAndPortDependent,
                ..
            }
        ),
        "{assumed}"
    );
    let updates: Vec<(Instant, Behaviour)> = s.events[0]
        .iter()
        .filter_map(|(at, e)| match e {
            Event::NatUpdated { behaviour } => Some((*at, *behaviour)),
            _ => None,
        })
        .collect();
    assert_eq!(updates.len(), 1, "{updates:?}");
    let (updated_at, behaviour) = updates[0];
    assert!(updated_at - start >= FILTERING_SILENCE);
    assert!(
        matches!(
            behaviour,
            Behaviour::Nat {
                filtering: Filtering::AddressDependent,
                ..
            }
        ),
        "{behaviour}"
    );
    // The connection the assumption planned is direct all the same, on both sides.
    for i in 0..2 {
        let paths = s.paths(i);
        assert!(
            paths.last().is_some_and(|p| !p.3),
            "node {i} ends direct: {paths:?}"
        );
    }
}

#[test]
fn a_round_planned_on_the_assumption_is_followed_by_one_on_the_update() {
    // Node A behind a restricted cone, B behind random ports: on A's provisional behaviour
    // (port-dependent filtering) the pair needs a birthday round; on its real one (address-
    // dependent) B's first check to A's srflx gets through. A connects 4.7 s in, 0.3 s before
    // its filtering tests end, while neither the route between the sites nor A's way to the
    // TURN server works: the round planned on the assumption fails. The update reaches both
    // sides mid-round; when the round is over each builds its agent again, and once the route
    // is back the new plan finds the direct path at once, instead of never (the rounds after
    // the first repeat no birthday round).
    let mut s = Scenario::new(
        Preset::RestrictedCone,
        Preset::SymmetricSequential,
        1,
        &Profile::default(),
    );
    let (site_a, site_b, turn): (IpAddr, IpAddr, IpAddr) = (
        [203, 0, 113, 1].into(),
        [203, 0, 113, 2].into(),
        [198, 51, 100, 3].into(),
    );
    s.sim.set_blackhole(site_a, site_b, true);
    s.sim.set_blackhole(site_a, turn, true);
    let start = s.sim.now();
    s.run_for(Duration::from_millis(4_700));
    s.connect();
    s.run_for(Duration::from_millis(3_000));
    let replans = |s: &mut Scenario, i| s.with_node(i, |n, _| n.counters().replans);
    assert_eq!(
        (replans(&mut s, 0), replans(&mut s, 1)),
        (0, 0),
        "mid-round"
    );
    assert!(s.paths(0).is_empty() && s.paths(1).is_empty());
    s.run_for(Duration::from_millis(3_000));
    assert_eq!(
        (replans(&mut s, 0), replans(&mut s, 1)),
        (1, 1),
        "both agents built again when the round ended"
    );
    s.sim.set_blackhole(site_a, site_b, false);
    s.sim.set_blackhole(site_a, turn, false);
    let back = s.sim.now();
    s.run_for(Duration::from_secs(5));
    for i in 0..2 {
        let paths = s.paths(i);
        let (at, _, _, relayed) = *paths
            .iter()
            .find(|p| !p.3)
            .unwrap_or_else(|| panic!("node {i} never direct: {paths:?}"));
        assert!(!relayed);
        assert!(
            at - back < Duration::from_secs(2),
            "node {i} direct {:?} after the route came back ({:?} from the start)",
            at - back,
            at - start
        );
    }
}

#[test]
fn a_restart_on_the_same_network_is_ready_at_test_i_with_what_it_found_before() {
    // A symmetric NAT with sequential ports: a first start waits for its port samples.
    let pair = (Preset::SymmetricSequential, Preset::PortRestrictedCone);
    let ready_after = |s: &Scenario, start: Instant| {
        s.events[0].iter().find_map(|(at, e)| match e {
            Event::Ready { behaviour, .. } => Some((*at - start, *behaviour)),
            _ => None,
        })
    };
    let mut first = Scenario::new(pair.0, pair.1, 4, &Profile::default());
    let start = first.sim.now();
    first.run_for(Duration::from_secs(8));
    let (cold, _) = ready_after(&first, start).expect("ready");
    let known = |i: usize| {
        first.events[i].iter().find_map(|(_, e)| match e {
            Event::NatKnown(k) => Some(*k),
            _ => None,
        })
    };
    let known = [known(0), known(1)];
    let found = known[0]
        .expect("discovery finished: something to remember")
        .behaviour;
    assert!(known[1].is_some());

    // The same network again, remembered: ready one STUN round trip in, with the behaviour
    // found before (ports and all), and connected directly as before.
    let profile = Profile {
        known_nat: known,
        ..Profile::default()
    };
    let mut again = Scenario::new(pair.0, pair.1, 4, &profile);
    let start = again.sim.now();
    again.connect();
    again.run_for(Duration::from_secs(3));
    let (warm, behaviour) = ready_after(&again, start).expect("ready");
    assert_eq!(behaviour, found);
    assert!(
        warm < cold / 2 && warm < Duration::from_millis(150),
        "ready after {warm:?}, {cold:?} the first time"
    );
    for i in 0..2 {
        let paths = again.paths(i);
        assert!(paths.first().is_some_and(|p| !p.3), "node {i}: {paths:?}");
    }

    // Remembered for another network (another public IP): not used.
    let mut elsewhere = known;
    if let Some(k) = &mut elsewhere[0] {
        k.public = [198, 18, 0, 1].into();
    }
    let profile = Profile {
        known_nat: elsewhere,
        ..Profile::default()
    };
    let mut other = Scenario::new(pair.0, pair.1, 4, &profile);
    let start = other.sim.now();
    other.run_for(Duration::from_secs(3));
    let (ready, _) = ready_after(&other, start).expect("ready");
    assert_eq!(ready, cold, "waited for discovery as a first start does");
}

#[test]
fn a_node_whose_udp_is_blocked_is_ready_in_well_under_a_second() {
    // Only signaling (TCP) reaches the servers: test I's silence takes all its retransmissions
    // (4.75 s), but a node need not wait for it: once its first requests went unanswered for
    // longer than any answer takes, it assumes UDP blocked (the most restrictive reading) and
    // connects through the signaling relay; an answer coming later is announced as an update.
    for (a, b) in [
        (Preset::UdpBlocked, Preset::PortRestrictedCone),
        (Preset::PortRestrictedCone, Preset::UdpBlocked),
        (Preset::UdpBlocked, Preset::UdpBlocked),
    ] {
        let mut s = Scenario::new(a, b, 7, &Profile::default());
        let start = s.sim.now();
        s.connect();
        s.run_for(Duration::from_secs(3));
        for i in 0..2 {
            let (ready_at, behaviour) = s.events[i]
                .iter()
                .find_map(|(at, e)| match e {
                    Event::Ready { behaviour, .. } => Some((*at, *behaviour)),
                    _ => None,
                })
                .unwrap_or_else(|| panic!("{a} × {b}: node {i} never ready"));
            eprintln!(
                "{a} × {b}: node {i} ready after {:?} ({behaviour})",
                ready_at - start
            );
            let blocked = [a, b][i] == Preset::UdpBlocked;
            assert_eq!(
                behaviour == Behaviour::UdpBlocked,
                blocked,
                "{a} × {b}: node {i}"
            );
            assert!(
                ready_at - start < Duration::from_millis(800),
                "{a} × {b}: node {i} ready after {:?}",
                ready_at - start
            );
            let paths = s.paths(i);
            let (at, ..) = *paths
                .first()
                .unwrap_or_else(|| panic!("{a} × {b}: node {i} has no path"));
            eprintln!("{a} × {b}: node {i}'s first path after {:?}", at - start);
            assert!(
                at - start < Duration::from_millis(1_500),
                "{a} × {b}: node {i}'s first path after {:?}",
                at - start
            );
        }
    }
}

/// A lossy start: the STUN server's answers to node A are lost for its first 600 ms, so A
/// assumes UDP blocked (`assume_udp_blocked_after`, 500 ms) and the connection it makes at
/// once goes over the signaling relay. Test I's later retransmission is answered: A's
/// behaviour is corrected (`NatUpdated`) and the connection must learn it too, with A's
/// server-reflexive candidate, and find the direct path two cones have, instead of staying
/// on the relay that the wrong reading planned.
#[test]
fn a_wrong_udp_blocked_is_replanned_onto_a_direct_path() {
    let mut s = Scenario::new(
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        7,
        &Profile {
            loss: 0.0,
            ..Profile::default()
        },
    );
    let site_a: IpAddr = [203, 0, 113, 1].into();
    let stun: [IpAddr; 2] = [[198, 51, 100, 1].into(), [198, 51, 100, 2].into()];
    for ip in stun {
        s.sim.set_blackhole(site_a, ip, true);
    }
    let start = s.sim.now();
    s.connect();
    s.run_for(Duration::from_millis(600));
    let blocked = first_at(
        &s.events[0],
        |e| matches!(e, Event::Ready { behaviour, .. } if *behaviour == Behaviour::UdpBlocked),
    );
    assert!(
        blocked.is_some(),
        "A assumed UDP blocked: {:?}",
        s.events[0]
    );
    for ip in stun {
        s.sim.set_blackhole(site_a, ip, false);
    }
    s.run_for(Duration::from_secs(5));
    let corrected = first_at(&s.events[0], |e| matches!(e, Event::NatUpdated { .. }))
        .expect("a later answer corrects the reading");
    for i in 0..2 {
        let paths = s.paths(i);
        let direct = paths
            .iter()
            .find(|p| !p.3 && p.2.port() != 0)
            .unwrap_or_else(|| panic!("node {i} never direct: {paths:?}"));
        eprintln!(
            "node {i}: corrected {:?} in, direct {:?} in: {paths:?}",
            corrected - start,
            direct.0 - start
        );
        assert!(
            direct.0 - corrected < Duration::from_secs(2),
            "node {i} direct {:?} after the correction",
            direct.0 - corrected
        );
    }
}
