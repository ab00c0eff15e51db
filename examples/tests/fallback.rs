//! Relay fallback and upgrade in place, in the simulator: two nodes behind port-restricted cone
//! NATs connect directly; the route between their networks then fails (both still reach the
//! TURN server); both move to the relay within the consent timeout without losing the
//! connection, and back to a direct path once the route returns.

use std::net::IpAddr;
use std::time::Duration;

use fog_examples::scenario::{Profile, Scenario};
use fog_sim::presets::Preset;

#[test]
fn a_dead_direct_path_falls_back_to_the_relay_and_comes_back() {
    let mut s = Scenario::new(
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        11,
        &Profile::default(),
    );
    assert!(s.wait_ready());
    s.connect();
    s.run_for(Duration::from_secs(2));
    for i in 0..2 {
        let paths = s.paths(i);
        assert_eq!(paths.len(), 1, "node {i}: {paths:?}");
        assert!(!paths[0].3, "node {i} starts direct: {paths:?}");
    }

    // The route between the two sites' public addresses fails.
    let (a, b): (IpAddr, IpAddr) = ([203, 0, 113, 1].into(), [203, 0, 113, 2].into());
    s.sim.set_blackhole(a, b, true);
    let cut = s.sim.now();
    s.run_for(Duration::from_secs(40));
    for i in 0..2 {
        let paths = s.paths(i);
        let (at, local, remote, relayed) = *paths.last().unwrap();
        assert!(relayed, "node {i} is on the relay: {paths:?}");
        // Through the TURN server (198.51.100.3): our relayed address or the peer's.
        let turn: IpAddr = [198, 51, 100, 3].into();
        assert!(local.ip() == turn || remote.ip() == turn, "{paths:?}");
        // Consent lapses after 30 s; the move follows at once (RFC 7675's bound, 5 s checks).
        let after = at - cut;
        assert!(
            after >= Duration::from_secs(25) && after <= Duration::from_secs(36),
            "node {i} moved after {after:?}"
        );
    }

    // The route comes back: a later round of punching finds the direct path again.
    s.sim.set_blackhole(a, b, false);
    let back = s.sim.now();
    s.run_for(Duration::from_secs(45));
    for i in 0..2 {
        let paths = s.paths(i);
        let (at, _, _, relayed) = *paths.last().unwrap();
        assert!(!relayed, "node {i} is direct again: {paths:?}");
        assert!(at - back <= Duration::from_secs(31), "node {i}: {paths:?}");
        // Direct, then the relay (one relayed pair, or two: which side's relay carries the
        // path may change once as the relayed pairs verify), then direct.
        let relayed: Vec<bool> = paths.iter().map(|p| p.3).collect();
        assert!(
            (3..=4).contains(&paths.len())
                && !relayed[0]
                && relayed[1..relayed.len() - 1].iter().all(|&r| r),
            "direct, relay, direct: {paths:?}"
        );
    }
}

/// A NAT that forgets every binding takes the TURN allocation with it (the server knows an
/// allocation by its 5-tuple, RFC 8656 §2.2). The node notices at its next keepalive (a new
/// mapping), refreshes the allocation at once, finds it gone, and allocates again, so a
/// connection that only a relay can carry still connects. Before, the dead allocation stayed
/// the node's relayed candidate, and every such connect failed after 30 s with no path (the
/// chaos run, seed 63).
#[test]
fn a_relay_lost_to_a_nat_reset_is_made_again() {
    let mut s = Scenario::new(
        Preset::SymmetricRandom,
        Preset::SymmetricRandom,
        5,
        &Profile::default(),
    );
    assert!(s.wait_ready());
    s.run_for(Duration::from_secs(1));
    let relayed_before = relayed(&s, 0);
    for i in 0..2 {
        for nat in s.sites[i].middleboxes.clone() {
            s.sim.reset_nat(nat);
        }
    }
    // A keepalive interval (15 s) and a refresh's round trip later.
    s.run_for(Duration::from_secs(20));
    for i in 0..2 {
        let lost = s.with_node(i, |n, _| n.counters().relays_lost);
        assert_eq!(lost, 1, "node {i} lost its allocation once");
    }
    assert_ne!(relayed(&s, 0), relayed_before, "a new allocation");

    let (start, _) = s.connect();
    s.run_for(Duration::from_secs(10));
    for i in 0..2 {
        let paths = s.paths(i);
        let first = paths
            .first()
            .unwrap_or_else(|| panic!("node {i} connected: {paths:?}"));
        assert!(first.3, "node {i} is on the relay: {paths:?}");
        assert!(
            first.0 - start < Duration::from_secs(5),
            "node {i}: {paths:?}"
        );
    }
}

/// Node `i`'s latest relayed address.
fn relayed(s: &Scenario, i: usize) -> Option<std::net::SocketAddr> {
    s.events[i].iter().rev().find_map(|(_, e)| match e {
        fogconnect::Event::RelayReady { relayed } => Some(*relayed),
        _ => None,
    })
}

/// An allocation that worked and is lost is made again at once; one lost again soon after
/// waits for the back-off (1 s, then doubling), so that a server or NAT that loses our
/// allocations over and over is not asked at its round-trip rate; at once again once
/// `RELAY_AT_ONCE_EVERY` (30 s) passed. The back-off starts again from 1 s only after an
/// allocation lived `RELAY_RETRY_MAX` (60 s): the one after 2 s, 40 s later. Each loss here: node A's NAT moves every flow to a new
/// port and A checks its mapping at once (`regather`), finds it moved, refreshes its
/// allocation from the new port and gets 437 Allocation Mismatch (RFC 8656 §7.3).
#[test]
fn a_lost_relay_is_made_again_at_once_then_after_a_back_off() {
    let mut s = Scenario::new(
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        12,
        // No loss: a lost Allocate would add its retransmission (0.5 s) to what is measured.
        &Profile {
            loss: 0.0,
            ..Profile::default()
        },
    );
    assert!(s.wait_ready());
    s.run_for(Duration::from_secs(1));
    let nat = s.sites[0].middleboxes[0];
    let lose = |s: &mut Scenario| {
        let old = relayed(s, 0).expect("A has an allocation");
        s.sim.rebind_nat(nat);
        s.with_node(0, |n, now| n.regather(now));
        s.run_for(Duration::from_secs(5));
        // When A withdrew the old relayed candidate, and when the new one was ready.
        let lost = s.events[0]
            .iter()
            .find_map(|(at, e)| match e {
                fogconnect::Event::CandidatesChanged { removed, .. } if removed.contains(&old) => {
                    Some(*at)
                }
                _ => None,
            })
            .expect("A withdrew its lost relayed candidate");
        let ready = s.events[0]
            .iter()
            .find_map(|(at, e)| match e {
                fogconnect::Event::RelayReady { .. } if *at > lost => Some(*at),
                _ => None,
            })
            .expect("A allocated again");
        ready - lost
    };
    // One signaling round trip for credentials (60 ms) and two Allocates with the 401
    // challenge (70 ms each): about 0.2 s.
    let first = lose(&mut s);
    assert!(first < Duration::from_millis(500), "first loss: {first:?}");
    let second = lose(&mut s);
    assert!(
        second >= Duration::from_secs(1) && second < Duration::from_millis(1_500),
        "a second loss 5 s later waits the back-off: {second:?}"
    );
    s.run_for(Duration::from_secs(30));
    let third = lose(&mut s);
    assert!(
        third < Duration::from_millis(500),
        "a loss 35 s after the last at once: {third:?}"
    );
    let fourth = lose(&mut s);
    assert!(
        fourth >= Duration::from_secs(2) && fourth < Duration::from_millis(2_500),
        "a fourth loss 5 s after the third waits the doubled back-off: {fourth:?}"
    );
    let lost = s.with_node(0, |n, _| n.counters().relays_lost);
    assert_eq!(lost, 4, "A lost four allocations");
}
