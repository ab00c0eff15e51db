//! QUIC connections in the simulator (kept apart from `transports.rs` while the transports
//! are wired in one by one; the helpers are the same shape).

use std::time::Duration;

use fog_examples::scenario::{Profile, Scenario, SimNode};
use fog_sim::presets::Preset;
use fogconnect::{CloseReason, ConnectionId, Event, SendError, Transport};

fn quic_scenario(a: Preset, b: Preset, seed: u64, loss: f64) -> Scenario {
    let profile = Profile {
        loss,
        ..Profile::default()
    };
    // QUIC runs by default.
    Scenario::new(a, b, seed, &profile)
}

fn connect_quic(s: &mut Scenario) -> (ConnectionId, ConnectionId) {
    assert!(s.wait_ready(), "both nodes ready");
    let to = s.hosts[1].1;
    let a = s
        .sim
        .with_machine(s.hosts[0].0, |m: &mut SimNode, now| {
            m.node.connect_with(now, to, 1, Transport::Quic)
        })
        .expect("A may connect");
    let b = connected(s, 1, Duration::from_secs(15));
    connected(s, 0, Duration::from_secs(15));
    (a, b)
}

fn connected(s: &mut Scenario, i: usize, limit: Duration) -> ConnectionId {
    for _ in 0..(limit.as_millis() / 100) {
        if let Some(id) = s.events[i].iter().find_map(|(_, e)| match e {
            Event::Connected { id, .. } => Some(*id),
            _ => None,
        }) {
            return id;
        }
        s.run_for(Duration::from_millis(100));
    }
    panic!("node {i} never connected: {:#?}", s.events[i]);
}

fn message(k: u32) -> Vec<u8> {
    let len = 4 + (k as usize * 7919) % 6000;
    let mut m = k.to_be_bytes().to_vec();
    m.extend((0..len - 4).map(|i| (i as u32).wrapping_mul(31).wrapping_add(k) as u8));
    m
}

fn send_all(s: &mut Scenario, from: usize, id: ConnectionId, count: u32) {
    let mut k = 0;
    let mut stalls = 0;
    while k < count {
        let m = message(k);
        match s.with_node(from, |n, now| n.send(now, id, &m)) {
            Ok(()) => k += 1,
            Err(SendError::Blocked) => {
                stalls += 1;
                assert!(stalls < 10_000, "the stream never took message {k}");
                s.run_for(Duration::from_millis(20));
            }
            Err(e) => panic!("message {k}: {e}"),
        }
    }
}

fn received(s: &Scenario, i: usize, id: ConnectionId) -> Vec<Vec<u8>> {
    s.events[i]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Data { id: c, data } if *c == id => Some(data.clone()),
            _ => None,
        })
        .collect()
}

fn assert_all_in_order(got: &[Vec<u8>], count: u32) {
    assert_eq!(got.len(), count as usize, "messages received");
    for (k, m) in got.iter().enumerate() {
        assert!(*m == message(k as u32), "message {k} differs");
    }
}

fn both_ways(a: Preset, b: Preset, loss: f64, seed: u64) {
    let mut s = quic_scenario(a, b, seed, loss);
    let (a_id, b_id) = connect_quic(&mut s);
    let count = 150;
    send_all(&mut s, 0, a_id, count);
    send_all(&mut s, 1, b_id, count);
    s.run_for(Duration::from_secs(20));
    assert_all_in_order(&received(&s, 1, b_id), count);
    assert_all_in_order(&received(&s, 0, a_id), count);
}

#[test]
fn quic_delivers_everything_in_order_without_loss() {
    both_ways(Preset::FullCone, Preset::PortRestrictedCone, 0.0, 3);
}

#[test]
fn quic_delivers_everything_in_order_at_5_percent_loss() {
    both_ways(Preset::RestrictedCone, Preset::PortRestrictedCone, 0.05, 5);
}

#[test]
fn a_quic_close_lets_everything_sent_arrive_first() {
    let mut s = quic_scenario(Preset::FullCone, Preset::FullCone, 21, 0.05);
    let (a_id, b_id) = connect_quic(&mut s);
    let count = 100;
    send_all(&mut s, 0, a_id, count);
    s.with_node(0, |n, now| n.close(now, a_id, 42, "done"))
        .expect("close");
    s.run_for(Duration::from_secs(30));
    assert_all_in_order(&received(&s, 1, b_id), count);
    let closed_at_b = s.events[1].iter().position(|(_, e)| {
        matches!(e, Event::Closed { id, reason: CloseReason::Application { code: 42, reason }, by_peer: true }
            if *id == b_id && reason == "done")
    });
    let last_data_at_b = s.events[1]
        .iter()
        .rposition(|(_, e)| matches!(e, Event::Data { id, .. } if *id == b_id));
    assert!(
        closed_at_b.is_some() && last_data_at_b < closed_at_b,
        "B sees all data, then the close: {:#?}",
        s.events[1].iter().rev().take(5).collect::<Vec<_>>()
    );
}

#[test]
fn quic_delivers_everything_in_order_at_1_percent_loss() {
    both_ways(
        Preset::PortRestrictedCone,
        Preset::SymmetricSequential,
        0.01,
        4,
    );
}

/// Two random-port NATs: the relay carries the connection first, a birthday round moves it
/// to a direct path later; QUIC sees one peer throughout (no migration, no new handshake).
#[test]
fn quic_carries_on_across_a_relay_to_direct_change() {
    let mut s = quic_scenario(
        Preset::SymmetricRandom,
        Preset::PortRestrictedCone,
        12,
        0.01,
    );
    let (a_id, b_id) = connect_quic(&mut s);
    let count = 400;
    for chunk in 0..20 {
        let first = chunk * count / 20;
        let mut k = first;
        while k < first + count / 20 {
            let m = message(k);
            match s.with_node(0, |n, now| n.send(now, a_id, &m)) {
                Ok(()) => k += 1,
                Err(SendError::Blocked) => s.run_for(Duration::from_millis(20)),
                Err(e) => panic!("message {k}: {e}"),
            }
        }
        s.run_for(Duration::from_millis(300));
    }
    s.run_for(Duration::from_secs(20));
    let kinds: Vec<bool> = s.paths(0).iter().map(|p| p.3).collect();
    assert!(
        kinds.first() == Some(&true) && kinds.contains(&false),
        "relayed first, then direct: {kinds:?}"
    );
    assert_all_in_order(&received(&s, 1, b_id), count);
}

/// A node that does not run QUIC refuses it with `REFUSED_TRANSPORT` (the certificate check is
/// in `trust.rs`).
#[test]
fn quic_is_refused_by_a_node_that_does_not_run_it() {
    let mut s = quic_scenario(Preset::FullCone, Preset::FullCone, 2, 0.0);
    s.with_node(1, |n, _| n.set_transports(vec![Transport::Datagram]));
    assert!(s.wait_ready());
    let to = s.hosts[1].1;
    let id = s
        .sim
        .with_machine(s.hosts[0].0, |m: &mut SimNode, now| {
            m.node.connect_with(now, to, 1, Transport::Quic)
        })
        .unwrap();
    s.run_for(Duration::from_secs(5));
    assert!(
        s.events[0].iter().any(|(_, e)| matches!(e,
            Event::Failed { id: i, reason: fogconnect::FailReason::Refused { code, .. } }
                if *i == id && *code == fogconnect::REFUSED_TRANSPORT)),
        "{:#?}",
        s.events[0]
    );
}

/// With no UDP on one side, QUIC runs over the signaling relay: the server's frame rate is the
/// bottleneck, the node keeps at most `MAX_RELAY_FRAMES` frames waiting and drops the rest as
/// a congested path would, and QUIC's own recovery delivers everything.
#[test]
fn quic_delivers_over_the_signaling_relay() {
    let mut s = quic_scenario(Preset::UdpBlocked, Preset::FullCone, 6, 0.0);
    let (a_id, b_id) = connect_quic(&mut s);
    let count = 40;
    send_all(&mut s, 0, a_id, count);
    s.run_for(Duration::from_secs(90));
    assert_all_in_order(&received(&s, 1, b_id), count);
    let waiting = s.with_node(0, |n, _| n.footprint().signal_frames);
    assert!(waiting <= fogconnect::MAX_RELAY_FRAMES, "{waiting}");
}
