//! Candidates beyond the base socket, in the simulator: a further interface (IPv6) that finds
//! a direct path where IPv4 needs a relay, and a NAT that maps anew (a reboot) whose new
//! server-reflexive address is noticed, trickled, and used.

use std::net::IpAddr;
use std::time::Duration;

use fog_core::SansIo as _;
use fog_examples::scenario::{Profile, Scenario, SimNode};
use fog_sim::presets::Preset;
use fogconnect::CandidateKind as Kind;
use fogconnect::Event;

/// The two-node scenario with IPv6 beside IPv4 on both sites (see [`Profile::ipv6`]).
fn dual_stack(a: Preset, b: Preset, seed: u64) -> Scenario {
    let profile = Profile {
        ipv6: true,
        ..Profile::default()
    };
    Scenario::new(a, b, seed, &profile)
}

#[test]
fn ipv6_connects_two_random_symmetric_nats_directly() {
    // IPv4 alone: the oracle's relay (both NATs random-symmetric).
    let mut v4 = Scenario::new(
        Preset::SymmetricRandom,
        Preset::SymmetricRandom,
        5,
        &Profile::default(),
    );
    assert!(v4.wait_ready());
    v4.connect();
    v4.run_for(Duration::from_secs(3));
    let paths = v4.paths(0);
    assert!(
        paths.last().is_some_and(|p| p.3),
        "relayed over IPv4: {paths:?}"
    );

    // The same sites with IPv6 beside: their NATs filter it (APDF) but do not translate it,
    // and the first checks each way open them.
    let mut s = dual_stack(Preset::SymmetricRandom, Preset::SymmetricRandom, 5);
    assert!(s.wait_ready());
    let (connect, _) = s.connect();
    s.run_for(Duration::from_secs(3));
    for i in 0..2 {
        let paths = s.paths(i);
        let (at, local, remote, relayed) = *paths.last().expect("connected");
        assert!(!relayed, "node {i} direct: {paths:?}");
        assert!(local.is_ipv6() && remote.is_ipv6(), "node {i}: {paths:?}");
        assert!(at - connect < Duration::from_secs(1), "node {i}: {paths:?}");
    }
}

#[test]
fn a_new_mapping_is_trickled_and_the_connection_comes_back_direct() {
    // Node A behind a carrier-grade NAT that allocates random ports (EIM, APDF): when it
    // reboots, A's base socket gets a new public port.
    let mut s = Scenario::new(
        Preset::CgnatBehindHome,
        Preset::PortRestrictedCone,
        21,
        &Profile::default(),
    );
    assert!(s.wait_ready());
    s.connect();
    s.run_for(Duration::from_secs(3));
    let before = *s.paths(1).last().expect("B connected");
    assert!(!before.3, "direct first: {:?}", s.paths(1));
    let old = before.2;

    let cgn = s.sites[0].middleboxes[1];
    s.sim.reset_nat(cgn);
    let reboot = s.sim.now();
    s.run_for(Duration::from_secs(60));

    // A's keepalive Binding (every 15 s) found the new address and reported it.
    let new = s.events[0]
        .iter()
        .find_map(|(t, e)| match e {
            Event::CandidatesChanged { added, removed } if *t > reboot => {
                assert_eq!(removed, &vec![old], "the old mapping goes");
                added
                    .iter()
                    .find(|c| c.kind == Kind::ServerReflexive)
                    .map(|c| (*t, c.addr))
            }
            _ => None,
        })
        .expect("A reports its new server-reflexive address");
    assert!(
        new.0 - reboot <= Duration::from_secs(16),
        "{:?}",
        new.0 - reboot
    );
    assert_ne!(new.1, old);
    assert_eq!(new.1.ip(), old.ip(), "same CGN, new port");

    // B learnt it by trickle and reaches A there, directly, on both sides; B leaves its
    // silent path for the new one once it has missed two consent checks (not the 30 s
    // consent timeout), and never needed the relay.
    let b = *s.paths(1).last().unwrap();
    assert!(!b.3, "B is direct again: {:?}", s.paths(1));
    assert!(b.0 - reboot <= Duration::from_secs(20), "{:?}", s.paths(1));
    assert!(s.paths(1).iter().all(|p| !p.3), "{:?}", s.paths(1));
    assert_eq!(
        b.2,
        new.1,
        "B's path goes to A's new address: {:?}",
        s.paths(1)
    );
    let a = *s.paths(0).last().unwrap();
    assert!(!a.3, "A is direct again: {:?}", s.paths(0));
    let public: IpAddr = [203, 0, 113, 2].into();
    assert_eq!(a.2.ip(), public, "{:?}", s.paths(0));
}

#[test]
fn an_address_that_comes_up_later_upgrades_a_relayed_connection() {
    // Dual-stack sites behind random-symmetric NATs, but the nodes start without their IPv6
    // addresses (as if the interface came up later): the connection goes through the relay.
    let mut s = dual_stack(Preset::SymmetricRandom, Preset::SymmetricRandom, 8);
    let v6 = |n: u16| -> IpAddr { std::net::Ipv6Addr::new(0x2001, 0xdb8, n, 0, 0, 0, 0, 2).into() };
    for i in 0..2 {
        s.sim.with_machine(s.hosts[i].0, |m: &mut SimNode, now| {
            m.node.set_interfaces(now, &[])
        });
    }
    assert!(s.wait_ready());
    s.connect();
    s.run_for(Duration::from_secs(3));
    for i in 0..2 {
        let paths = s.paths(i);
        assert!(
            paths.last().is_some_and(|p| p.3),
            "node {i} relayed: {paths:?}"
        );
    }

    // The addresses come up: each node reports its new host candidate and trickles it; the
    // agents check the new pairs at once and the connection moves to IPv6, in place.
    let up = s.sim.now();
    for i in 0..2 {
        let ip = v6(i as u16 + 1);
        s.sim.with_machine(s.hosts[i].0, |m: &mut SimNode, now| {
            m.node.set_interfaces(now, &[ip])
        });
    }
    s.run_for(Duration::from_secs(2));
    for i in 0..2 {
        let added = s.events[i].iter().any(|(t, e)| {
            *t >= up
                && matches!(e, Event::CandidatesChanged { added, .. }
                    if added.iter().any(|c| c.kind == Kind::Host && c.addr.ip() == v6(i as u16 + 1)))
        });
        assert!(added, "node {i} reported its new address");
        let paths = s.paths(i);
        let (at, local, remote, relayed) = *paths.last().unwrap();
        assert!(
            !relayed && local.is_ipv6() && remote.is_ipv6(),
            "node {i}: {paths:?}"
        );
        assert!(at - up < Duration::from_secs(1), "node {i}: {paths:?}");
    }
}

#[test]
fn an_address_that_cannot_be_bound_is_dropped_and_not_offered_again() {
    let mut s = dual_stack(Preset::PortRestrictedCone, Preset::FullCone, 4);
    assert!(s.wait_ready());
    let v6: IpAddr = std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 2).into();
    let socket = std::net::SocketAddr::new(v6, 5000);
    let host = s.hosts[0].0;
    let mark = s.sim.now();
    // The driver could not bind it (in the simulator every port binds, so say so by hand).
    s.sim.with_machine(host, |m: &mut SimNode, now| {
        m.node.handle_bind_error(now, socket)
    });
    // A gatherer that reads the interfaces again still lists it.
    for _ in 0..3 {
        s.sim.with_machine(host, |m: &mut SimNode, now| {
            m.node.set_interfaces(now, &[v6])
        });
        s.run_for(Duration::from_secs(1));
    }
    let changes: Vec<&Event> = s.events[0]
        .iter()
        .filter(|(t, e)| *t >= mark && matches!(e, Event::CandidatesChanged { .. }))
        .map(|(_, e)| e)
        .collect();
    assert_eq!(
        changes,
        [&Event::CandidatesChanged {
            added: vec![],
            removed: vec![socket]
        }],
        "removed once, never offered again"
    );
    assert!(
        !s.events[0]
            .iter()
            .any(|(t, e)| *t >= mark && matches!(e, Event::Failed { .. } | Event::Closed { .. })),
        "not an error for the node: no connection ends"
    );
}
