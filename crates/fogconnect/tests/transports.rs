//! Connections over a transport, in the simulator: every message arrives, in order and intact,
//! through NATs and lossy links, across a relay → direct path change, and a close lets what
//! was sent arrive first.

use std::time::Duration;

use fog_core::{Receive, SansIo as _};
use fog_examples::scenario::{Observed, Profile, Scenario, SimNode};
use fog_sim::presets::Preset;
use fogconnect::{
    CloseReason, ConnectError, ConnectionId, Event, FailReason, SendError, Transport, Via,
};

/// Node A connects to B over `transport`; the handle, once both nodes are ready.
fn connect_over(s: &mut Scenario, transport: Transport) -> ConnectionId {
    assert!(s.wait_ready(), "both nodes ready");
    let to = s.hosts[1].1;
    s.sim
        .with_machine(s.hosts[0].0, |m: &mut SimNode, now| {
            m.node.connect_with(now, to, 1, transport)
        })
        .expect("A may connect")
}

/// The handle node `i` got for its one connection (`Connected`), running the simulator up to
/// `limit` for it.
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

/// Message `k` of a run: its index, then bytes of a pattern, `len(k)` long in all (sizes from
/// a few bytes to several KCP fragments).
fn message(k: u32) -> Vec<u8> {
    let len = 4 + (k as usize * 7919) % 6000;
    let mut m = k.to_be_bytes().to_vec();
    m.extend((0..len - 4).map(|i| (i as u32).wrapping_mul(31).wrapping_add(k) as u8));
    m
}

/// Node `from` sends `count` messages on `id`, as fast as the stream takes them (running the
/// simulator while it says `Blocked`).
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

/// The data node `i` received on `id`, in order.
fn received(s: &Scenario, i: usize, id: ConnectionId) -> Vec<Vec<u8>> {
    s.events[i]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Data { id: c, data } if *c == id => Some(data.clone()),
            _ => None,
        })
        .collect()
}

/// KCP and SCTP keep each message whole; uTP is a byte stream, whose chunks need not match the sends.
fn assert_all_in_order(transport: &Transport, got: &[Vec<u8>], count: u32) {
    if *transport == Transport::Utp {
        let want: Vec<u8> = (0..count).flat_map(message).collect();
        let got: Vec<u8> = got.concat();
        assert_eq!(got.len(), want.len(), "bytes received");
        assert!(got == want, "the byte stream differs");
        return;
    }
    assert_eq!(got.len(), count as usize, "messages received");
    for (k, m) in got.iter().enumerate() {
        assert!(*m == message(k as u32), "message {k} differs");
    }
}

/// Both ways over `transport` between two NATs at `loss` on every access link.
fn both_ways(transport: Transport, a: Preset, b: Preset, loss: f64, seed: u64) {
    let profile = Profile {
        loss,
        ..Profile::default()
    };
    let mut s = Scenario::new(a, b, seed, &profile);
    let a_id = connect_over(&mut s, transport.clone());
    connected(&mut s, 0, Duration::from_secs(15));
    let b_id = connected(&mut s, 1, Duration::from_secs(15));
    let count = 150;
    send_all(&mut s, 0, a_id, count);
    send_all(&mut s, 1, b_id, count);
    s.run_for(Duration::from_secs(30));
    assert_all_in_order(&transport, &received(&s, 1, b_id), count);
    assert_all_in_order(&transport, &received(&s, 0, a_id), count);
}

#[test]
fn kcp_delivers_everything_in_order_without_loss() {
    both_ways(
        Transport::Kcp,
        Preset::FullCone,
        Preset::PortRestrictedCone,
        0.0,
        3,
    );
}

#[test]
fn utp_delivers_everything_in_order_without_loss() {
    both_ways(
        Transport::Utp,
        Preset::FullCone,
        Preset::PortRestrictedCone,
        0.0,
        3,
    );
}

#[test]
fn utp_delivers_everything_in_order_at_1_percent_loss() {
    both_ways(
        Transport::Utp,
        Preset::PortRestrictedCone,
        Preset::SymmetricSequential,
        0.01,
        4,
    );
}

#[test]
fn utp_delivers_everything_in_order_at_5_percent_loss() {
    both_ways(
        Transport::Utp,
        Preset::RestrictedCone,
        Preset::PortRestrictedCone,
        0.05,
        5,
    );
}

#[test]
fn kcp_delivers_everything_in_order_at_1_percent_loss() {
    both_ways(
        Transport::Kcp,
        Preset::PortRestrictedCone,
        Preset::SymmetricSequential,
        0.01,
        4,
    );
}

#[test]
fn kcp_delivers_everything_in_order_at_5_percent_loss() {
    both_ways(
        Transport::Kcp,
        Preset::RestrictedCone,
        Preset::PortRestrictedCone,
        0.05,
        5,
    );
}

#[test]
fn sctp_delivers_everything_in_order_without_loss() {
    both_ways(
        Transport::Sctp,
        Preset::FullCone,
        Preset::PortRestrictedCone,
        0.0,
        3,
    );
}

#[test]
fn sctp_delivers_everything_in_order_at_1_percent_loss() {
    both_ways(
        Transport::Sctp,
        Preset::PortRestrictedCone,
        Preset::SymmetricSequential,
        0.01,
        4,
    );
}

#[test]
fn sctp_delivers_everything_in_order_at_5_percent_loss() {
    both_ways(
        Transport::Sctp,
        Preset::RestrictedCone,
        Preset::PortRestrictedCone,
        0.05,
        5,
    );
}

#[test]
fn sctp_carries_on_across_a_relay_to_direct_change() {
    across_a_path_change(Transport::Sctp);
}

#[test]
fn a_sctp_close_lets_everything_sent_arrive_first() {
    close_after_sending(Transport::Sctp);
}

#[test]
fn sctp_closes_from_both_sides_at_once_end_both() {
    close_at_once(Transport::Sctp);
}

#[test]
fn kcp_carries_on_across_a_relay_to_direct_change() {
    across_a_path_change(Transport::Kcp);
}

#[test]
fn utp_carries_on_across_a_relay_to_direct_change() {
    across_a_path_change(Transport::Utp);
}

/// QUIC sees one peer throughout: the node carries its packets, so the path change needs no
/// migration and no new handshake.
#[test]
fn quic_carries_on_across_a_relay_to_direct_change() {
    across_a_path_change(Transport::Quic);
}

/// A random-port NAT and a port-restricted cone: the relay carries the connection first, a
/// birthday round moves it to a direct path later. What is sent from the first moment on
/// arrives across the change.
fn across_a_path_change(transport: Transport) {
    let mut s = Scenario::new(
        Preset::SymmetricRandom,
        Preset::PortRestrictedCone,
        12,
        &Profile::default(),
    );
    let a_id = connect_over(&mut s, transport.clone());
    let b_id = connected(&mut s, 1, Duration::from_secs(15));
    connected(&mut s, 0, Duration::from_secs(15));
    let count = 400;
    // Interleaved with the simulator, so that the transfer spans the path change.
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
    assert_all_in_order(&transport, &received(&s, 1, b_id), count);
}

#[test]
fn a_kcp_close_lets_everything_sent_arrive_first() {
    close_after_sending(Transport::Kcp);
}

#[test]
fn a_utp_close_lets_everything_sent_arrive_first() {
    close_after_sending(Transport::Utp);
}

#[test]
fn a_quic_close_lets_everything_sent_arrive_first() {
    close_after_sending(Transport::Quic);
}

/// A QUIC peer that closes right after a few messages, on a lossy link: the rest of its
/// stream and its end arrive together after a loss, and our side reads the stream more than
/// once in that batch. Every seed ends with the peer's close, never `TransportFailed`: a read
/// after the stream's end used to fail the connection (found by the chaos run, seed 1689).
#[test]
fn a_quic_stream_read_to_its_end_then_named_again_is_the_peers_close() {
    let profile = Profile {
        loss: 0.1,
        ..Profile::default()
    };
    let mut failed = Vec::new();
    for seed in 0..12 {
        let mut s = Scenario::new(Preset::FullCone, Preset::FullCone, seed, &profile);
        let a_id = connect_over(&mut s, Transport::Quic);
        connected(&mut s, 0, Duration::from_secs(15));
        let b_id = connected(&mut s, 1, Duration::from_secs(15));
        send_all(&mut s, 0, a_id, 15);
        s.with_node(0, |n, now| n.close(now, a_id, 42, "done"))
            .expect("close");
        s.run_for(Duration::from_secs(20));
        let end = s.events[1].iter().find_map(|(_, e)| match e {
            Event::Closed { id, reason, .. } if *id == b_id => Some(reason.clone()),
            _ => None,
        });
        if !matches!(end, Some(CloseReason::Application { code: 42, .. })) {
            failed.push((seed, end));
        }
    }
    assert!(failed.is_empty(), "seeds and B's ends: {failed:?}");
}

/// `close` right after the last send: everything sent arrives first, then the peer sees the
/// close with its code and reason.
fn close_after_sending(transport: Transport) {
    let profile = Profile {
        loss: 0.05,
        ..Profile::default()
    };
    let mut s = Scenario::new(Preset::FullCone, Preset::FullCone, 21, &profile);
    let a_id = connect_over(&mut s, transport.clone());
    connected(&mut s, 0, Duration::from_secs(15));
    let b_id = connected(&mut s, 1, Duration::from_secs(15));
    let count = 100;
    send_all(&mut s, 0, a_id, count);
    s.with_node(0, |n, now| n.close(now, a_id, 42, "done"))
        .expect("close");
    assert_eq!(
        s.with_node(0, |n, now| n.send(now, a_id, b"late")),
        Err(SendError::NotConnected),
        "nothing more after close"
    );
    s.run_for(Duration::from_secs(30));
    assert_all_in_order(&transport, &received(&s, 1, b_id), count);
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
    assert!(
        s.events[0].iter().any(|(_, e)| matches!(e,
            Event::Closed { id, by_peer: false, .. } if *id == a_id)),
        "A's close completes"
    );
}

#[test]
fn kcp_closes_from_both_sides_at_once_end_both() {
    close_at_once(Transport::Kcp);
}

#[test]
fn quic_closes_from_both_sides_at_once_end_both() {
    close_at_once(Transport::Quic);
}

#[test]
fn utp_closes_from_both_sides_at_once_end_both() {
    close_at_once(Transport::Utp);
}

/// Both sides `close` at the same instant (found by the chaos run, `examples/tests/chaos.rs`:
/// over KCP the two closes crossed, each side's KCP ended `Peer`, and both nodes held the
/// connection for ever): each side reports its own close and holds nothing after.
fn close_at_once(transport: Transport) {
    let mut s = Scenario::new(Preset::FullCone, Preset::FullCone, 23, &Profile::default());
    let a_id = connect_over(&mut s, transport.clone());
    connected(&mut s, 0, Duration::from_secs(15));
    let b_id = connected(&mut s, 1, Duration::from_secs(15));
    send_all(&mut s, 0, a_id, 3);
    s.run_for(Duration::from_secs(2));
    s.with_node(0, |n, now| n.close(now, a_id, 1, "a"))
        .expect("close");
    s.with_node(1, |n, now| n.close(now, b_id, 2, "b"))
        .expect("close");
    s.run_for(Duration::from_secs(30));
    for (i, id) in [(0, a_id), (1, b_id)] {
        assert!(
            s.events[i]
                .iter()
                .any(|(_, e)| matches!(e, Event::Closed { id: c, .. } if *c == id)),
            "node {i} ({transport:?}) reports the close"
        );
        assert_eq!(
            s.with_node(i, |n, _| n.footprint().connections),
            0,
            "node {i}"
        );
    }
}

#[test]
fn kcp_closes_that_cross_deliver_what_was_in_flight() {
    close_across_data(Transport::Kcp);
}

#[test]
fn quic_closes_that_cross_deliver_what_was_in_flight() {
    close_across_data(Transport::Quic);
}

#[test]
fn utp_closes_that_cross_deliver_what_was_in_flight() {
    close_across_data(Transport::Utp);
}

#[test]
fn sctp_closes_that_cross_deliver_what_was_in_flight() {
    close_across_data(Transport::Sctp);
}

/// A sends, then closes; B closes a moment later, before A's data has all arrived: the two
/// closes cross with data still in flight (found by the chaos run, seeds 982 and 2899: over
/// uTP, the peer's FIN reached A while A's own data waited for acknowledgement, A took the
/// closes as crossed and ended, and its sealed close ended B before the data arrived; seed
/// 1231: over SCTP, B's COOKIE ACK was lost, B's shutdown left A's repeated COOKIE ECHO
/// unanswered, and A's SHUTDOWN ACK dropped what A still had queued). A
/// close B reports as the peer's comes after everything A sent; over uTP, which closes whole
/// (each side's FIN follows its data and the connection ends when both are acknowledged),
/// so does B's own.
fn close_across_data(transport: Transport) {
    let profile = Profile {
        loss: 0.05,
        ..Profile::default()
    };
    let mut s = Scenario::new(Preset::FullCone, Preset::FullCone, 29, &profile);
    let a_id = connect_over(&mut s, transport.clone());
    connected(&mut s, 0, Duration::from_secs(15));
    let b_id = connected(&mut s, 1, Duration::from_secs(15));
    let count = 40;
    send_all(&mut s, 0, a_id, count);
    s.with_node(0, |n, now| n.close(now, a_id, 1, "a"))
        .expect("close");
    s.run_for(Duration::from_millis(150));
    s.with_node(1, |n, now| n.close(now, b_id, 2, "b"))
        .expect("close");
    s.run_for(Duration::from_secs(60));
    let (ended_at_b, by_peer) = s.events[1]
        .iter()
        .enumerate()
        .find_map(|(k, (_, e))| match e {
            Event::Closed { id, by_peer, .. } if *id == b_id => Some((k, *by_peer)),
            _ => None,
        })
        .expect("B's connection ends with a close");
    if by_peer || transport == Transport::Utp {
        let before_end: Vec<Vec<u8>> = s.events[1][..ended_at_b]
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Data { id, data } if *id == b_id => Some(data.clone()),
                _ => None,
            })
            .collect();
        assert_all_in_order(&transport, &before_end, count);
    }
    assert!(
        s.events[0]
            .iter()
            .any(|(_, e)| matches!(e, Event::Closed { id, .. } if *id == a_id)),
        "A's connection ends with a close"
    );
}

#[test]
fn kcp_a_close_while_the_peer_sends_ends_both_sides_closed() {
    close_while_the_peer_sends(Transport::Kcp);
}

#[test]
fn quic_a_close_while_the_peer_sends_ends_both_sides_closed() {
    close_while_the_peer_sends(Transport::Quic);
}

#[test]
fn utp_a_close_while_the_peer_sends_ends_both_sides_closed() {
    close_while_the_peer_sends(Transport::Utp);
}

#[test]
fn sctp_a_close_while_the_peer_sends_ends_both_sides_closed() {
    close_while_the_peer_sends(Transport::Sctp);
}

/// B closes while A's messages are on their way to it: B reports its own close and A the
/// peer's, each an application close with B's code (found by the chaos run, seed 934: over
/// QUIC, B's stream took A's data after B's connection had closed, the read failed, and B
/// reported a dead transport; A heard nothing and idled out).
fn close_while_the_peer_sends(transport: Transport) {
    let mut s = Scenario::new(Preset::FullCone, Preset::FullCone, 31, &Profile::default());
    let a_id = connect_over(&mut s, transport.clone());
    connected(&mut s, 0, Duration::from_secs(15));
    let b_id = connected(&mut s, 1, Duration::from_secs(15));
    s.run_for(Duration::from_millis(500));
    send_all(&mut s, 0, a_id, 20);
    s.run_for(Duration::from_millis(10));
    s.with_node(1, |n, now| n.close(now, b_id, 9, "b"))
        .expect("close");
    s.run_for(Duration::from_secs(60));
    for (i, id, peer) in [(0, a_id, true), (1, b_id, false)] {
        let end = s.events[i].iter().find_map(|(_, e)| match e {
            Event::Closed {
                id: c,
                reason,
                by_peer,
            } if *c == id => Some((reason.clone(), *by_peer)),
            _ => None,
        });
        assert_eq!(
            end,
            Some((
                CloseReason::Application {
                    code: 9,
                    reason: "b".into()
                },
                peer
            )),
            "node {i} ({transport:?})"
        );
    }
}

/// uTP closes whole: when the answerer closes while both sides are still sending, the
/// caller's uTP answers the FIN with its own after its data (BEP 29 ST_FIN), so each side
/// gets all the other sent, and the caller sees the close with the answerer's code.
#[test]
fn a_utp_close_by_the_answerer_while_both_send_delivers_both_ways() {
    let profile = Profile {
        loss: 0.05,
        ..Profile::default()
    };
    let mut s = Scenario::new(Preset::FullCone, Preset::RestrictedCone, 22, &profile);
    let a_id = connect_over(&mut s, Transport::Utp);
    connected(&mut s, 0, Duration::from_secs(15));
    let b_id = connected(&mut s, 1, Duration::from_secs(15));
    let count = 80;
    send_all(&mut s, 0, a_id, count);
    send_all(&mut s, 1, b_id, count);
    s.with_node(1, |n, now| n.close(now, b_id, 7, "bye"))
        .expect("close");
    s.run_for(Duration::from_secs(30));
    assert_all_in_order(&Transport::Utp, &received(&s, 0, a_id), count);
    assert_all_in_order(&Transport::Utp, &received(&s, 1, b_id), count);
    assert!(
        s.events[0].iter().any(|(_, e)| matches!(e,
            Event::Closed { id, reason: CloseReason::Application { code: 7, .. }, by_peer: true }
                if *id == a_id)),
        "A sees B's close"
    );
    assert!(
        s.events[1].iter().any(|(_, e)| matches!(e,
            Event::Closed { id, by_peer: false, .. } if *id == b_id)),
        "B's close completes"
    );
}

/// A transport the node does not run is refused at once; one the peer does not run is
/// refused by the peer with `REFUSED_TRANSPORT`.
#[test]
fn transports_not_run_are_refused() {
    let mut s = Scenario::new(Preset::FullCone, Preset::FullCone, 2, &Profile::default());
    assert!(s.wait_ready());
    let to = s.hosts[1].1;
    // A runs datagrams and KCP only (every transport is on by default).
    s.with_node(0, |n, _| {
        n.set_transports(vec![Transport::Datagram, Transport::Kcp])
    });
    let rtc = s.sim.with_machine(s.hosts[0].0, |m: &mut SimNode, now| {
        m.node.connect_with(now, to, 1, Transport::Rtc)
    });
    assert_eq!(rtc, Err(ConnectError::UnsupportedTransport(Transport::Rtc)));
    // B runs datagrams only.
    s.with_node(1, |n, _| n.set_transports(vec![Transport::Datagram]));
    let id = s
        .sim
        .with_machine(s.hosts[0].0, |m: &mut SimNode, now| {
            m.node.connect_with(now, to, 1, Transport::Kcp)
        })
        .unwrap();
    s.run_for(Duration::from_secs(5));
    assert!(
        s.events[0].iter().any(|(_, e)| matches!(e,
            Event::Failed { id: i, reason: FailReason::Refused { code, .. } }
                if *i == id && *code == fogconnect::REFUSED_TRANSPORT)),
        "{:#?}",
        s.events[0]
    );
    // Datagrams still connect.
    let id = s.connect().1;
    s.run_for(Duration::from_secs(5));
    assert!(s.events[0].iter().any(|(_, e)| matches!(e,
        Event::Connected { id: i, via: Via::Direct, .. } if *i == id)));
}

/// A full KCP send queue says `Blocked` (nothing of that message queued), and `Writable`
/// follows once the peer has acknowledged enough; then sends go on, and everything taken
/// arrives.
#[test]
fn a_full_kcp_queue_blocks_then_says_writable() {
    let mut s = Scenario::new(Preset::FullCone, Preset::FullCone, 8, &Profile::default());
    let a_id = connect_over(&mut s, Transport::Kcp);
    connected(&mut s, 0, Duration::from_secs(15));
    let b_id = connected(&mut s, 1, Duration::from_secs(15));
    let big = vec![0x5a; 100_000];
    let mut taken = 0;
    loop {
        match s.with_node(0, |n, now| n.send(now, a_id, &big)) {
            Ok(()) => taken += 1,
            Err(SendError::Blocked) => break,
            Err(e) => panic!("{e}"),
        }
        assert!(taken < 1_000, "the queue never filled");
    }
    let before = s.events[0].len();
    s.run_for(Duration::from_secs(20));
    assert!(
        s.events[0][before..]
            .iter()
            .any(|(_, e)| *e == Event::Writable),
        "Writable after Blocked"
    );
    s.with_node(0, |n, now| n.send(now, a_id, &big))
        .expect("room again");
    taken += 1;
    s.run_for(Duration::from_secs(30));
    let got = received(&s, 1, b_id);
    assert_eq!(got.len(), taken, "every message taken arrived");
    assert!(got.iter().all(|m| *m == big));
}

#[test]
fn quic_delivers_everything_in_order_without_loss() {
    both_ways(
        Transport::Quic,
        Preset::FullCone,
        Preset::PortRestrictedCone,
        0.0,
        3,
    );
}

#[test]
fn quic_delivers_everything_in_order_at_1_percent_loss() {
    both_ways(
        Transport::Quic,
        Preset::PortRestrictedCone,
        Preset::SymmetricSequential,
        0.01,
        4,
    );
}

#[test]
fn quic_delivers_everything_in_order_at_5_percent_loss() {
    both_ways(
        Transport::Quic,
        Preset::RestrictedCone,
        Preset::PortRestrictedCone,
        0.05,
        5,
    );
}

/// With no UDP on one side, QUIC runs over the signaling relay: the server's frame rate is the
/// bottleneck, the node keeps at most `MAX_RELAY_FRAMES` frames waiting and drops the rest as
/// a congested path would, and QUIC's own recovery delivers everything.
#[test]
fn quic_delivers_over_the_signaling_relay() {
    let mut s = Scenario::new(
        Preset::UdpBlocked,
        Preset::FullCone,
        6,
        &Profile {
            loss: 0.0,
            ..Profile::default()
        },
    );
    let a_id = connect_over(&mut s, Transport::Quic);
    connected(&mut s, 0, Duration::from_secs(15));
    let b_id = connected(&mut s, 1, Duration::from_secs(15));
    let count = 40;
    send_all(&mut s, 0, a_id, count);
    s.run_for(Duration::from_secs(90));
    assert_all_in_order(&Transport::Quic, &received(&s, 1, b_id), count);
    let waiting = s.with_node(0, |n, _| n.footprint().signal_frames);
    assert!(waiting <= fogconnect::MAX_RELAY_FRAMES, "{waiting}");
}

#[test]
fn utp_survives_a_dead_direct_path_with_data_in_flight() {
    across_a_dead_path(Transport::Utp);
}

#[test]
fn quic_survives_a_dead_direct_path_with_data_in_flight() {
    across_a_dead_path(Transport::Quic);
}

#[test]
fn sctp_survives_a_dead_direct_path_with_data_in_flight() {
    across_a_dead_path(Transport::Sctp);
}

/// Two port-restricted cones connect directly; the route between them dies just as a batch
/// is sent. Consent moves the connection to the relay after about 30 s, by which time the
/// transport's retransmission timer has backed off for as long; the move restarts it, so the
/// batch arrives and the connection lives. Before, uTP gave up just after the move (this
/// test's uTP case fails without the restart); QUIC idled out in the chaos run's seed 96, with
/// more loss and delay than here, where its own probe still comes before its idle timeout.
fn across_a_dead_path(transport: Transport) {
    let mut s = Scenario::new(
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        11,
        &Profile::default(),
    );
    let a_id = connect_over(&mut s, transport.clone());
    let b_id = connected(&mut s, 1, Duration::from_secs(15));
    connected(&mut s, 0, Duration::from_secs(15));
    s.run_for(Duration::from_secs(2));
    let (a, b): (std::net::IpAddr, std::net::IpAddr) =
        ([203, 0, 113, 1].into(), [203, 0, 113, 2].into());
    s.sim.set_blackhole(a, b, true);
    let count = 40;
    send_all(&mut s, 0, a_id, count);
    s.run_for(Duration::from_secs(70));
    let paths = s.paths(0);
    assert!(
        paths.last().is_some_and(|p| p.3),
        "on the relay by now: {paths:?}"
    );
    for i in 0..2 {
        let ended = s.events[i]
            .iter()
            .any(|(_, e)| matches!(e, Event::Closed { .. } | Event::Failed { .. }));
        assert!(!ended, "node {i}'s connection ended: {:#?}", s.events[i]);
    }
    assert_all_in_order(&transport, &received(&s, 1, b_id), count);
}

// WebRTC data channels (fog-rtc on str0m) inside the session's sealed datagrams. DTLS draws
// from the OS random source, so these runs are not bit-for-bit repeatable; what they check is.

#[test]
fn rtc_delivers_everything_in_order_without_loss() {
    both_ways(
        Transport::Rtc,
        Preset::FullCone,
        Preset::PortRestrictedCone,
        0.0,
        3,
    );
}

#[test]
fn rtc_delivers_everything_in_order_at_1_percent_loss() {
    both_ways(
        Transport::Rtc,
        Preset::FullCone,
        Preset::PortRestrictedCone,
        0.01,
        4,
    );
}

#[test]
fn rtc_delivers_everything_in_order_at_5_percent_loss() {
    both_ways(
        Transport::Rtc,
        Preset::FullCone,
        Preset::PortRestrictedCone,
        0.05,
        5,
    );
}

/// The RTC peer sees two made-up candidates throughout: the node carries its datagrams, so
/// the path change needs no ICE restart.
#[test]
fn rtc_carries_on_across_a_relay_to_direct_change() {
    across_a_path_change(Transport::Rtc);
}

#[test]
fn a_rtc_close_lets_everything_sent_arrive_first() {
    close_after_sending(Transport::Rtc);
}

#[test]
fn rtc_closes_from_both_sides_at_once_end_both() {
    close_at_once(Transport::Rtc);
}

/// An RTC connection's bulk, DTLS application data, rides behind the receiver's session tag
/// only (DTLS protects it under a handshake the signed fingerprints authenticate); the rest
/// (ICE, the handshake with its certificates) stays sealed. Behind the tag the receiver takes
/// nothing else: a plaintext handshake record there is refused, and an altered or replayed
/// record is DTLS's to drop, which costs the transfer nothing.
#[test]
fn rtc_application_data_rides_behind_the_tag_and_forgeries_do_no_harm() {
    let mut s = Scenario::new(
        Preset::FullCone,
        Preset::PortRestrictedCone,
        6,
        &Profile::default(),
    );
    let host = s.hosts[0].0;
    s.sim
        .with_machine(host, |m: &mut SimNode, _| m.log = Some(Observed::default()));
    let a_id = connect_over(&mut s, Transport::Rtc);
    connected(&mut s, 0, Duration::from_secs(15));
    let b_id = connected(&mut s, 1, Duration::from_secs(15));
    let count = 100;
    send_all(&mut s, 0, a_id, count / 2);
    s.run_for(Duration::from_secs(2));
    let log = s
        .sim
        .with_machine(host, |m: &mut SimNode, _| m.log.take())
        .expect("A's datagrams");
    let bytes = |framing: u8| -> usize {
        log.datagrams
            .iter()
            .filter(|(_, d)| d.first() == Some(&framing))
            .map(|(_, d)| d.len())
            .sum()
    };
    let (tagged, sealed) = (bytes(8), bytes(7));
    assert!(
        tagged > 10 * sealed,
        "the bulk goes behind the tag: {tagged} bytes tagged, {sealed} sealed"
    );
    let behind_tag: Vec<&Vec<u8>> = log
        .datagrams
        .iter()
        .map(|(_, d)| d)
        .filter(|d| d.first() == Some(&8))
        .collect();
    for d in &behind_tag {
        // RFC 6347 §4.1: application data (23), DTLS 1.2, epoch 1.
        assert_eq!(
            d[9..14],
            [23, 254, 253, 0, 1],
            "only protected application data"
        );
    }
    assert!(
        log.datagrams
            .iter()
            .all(|(_, d)| !(20..=63).contains(&d[0])),
        "no DTLS goes bare on the path"
    );

    // Behind B's tag, from where A's datagrams come: a handshake record in the clear, an
    // altered application-data record, a replayed one.
    let (_, local, remote, _) = *s.paths(1).last().expect("B's path");
    let first = behind_tag[0];
    let mut handshake = first[..9].to_vec();
    handshake.extend_from_slice(&[22, 254, 253, 0, 0, 0, 0, 0, 0, 0, 9, 0, 4, 1, 0, 0, 0]);
    let mut altered = behind_tag[behind_tag.len() / 2].clone();
    *altered.last_mut().expect("a record") ^= 1;
    let before = s.with_node(1, |n, _| n.counters());
    for d in [&handshake, &altered, first] {
        s.with_node(1, |n, now| {
            n.handle_packet(
                now,
                Receive {
                    source: remote,
                    local,
                    payload: d,
                },
            );
        });
    }
    let after = s.with_node(1, |n, _| n.counters());
    assert_eq!(
        after.stray,
        before.stray + 1,
        "the plaintext record is refused"
    );

    let mut k = count / 2;
    while k < count {
        let m = message(k);
        match s.with_node(0, |n, now| n.send(now, a_id, &m)) {
            Ok(()) => k += 1,
            Err(SendError::Blocked) => s.run_for(Duration::from_millis(20)),
            Err(e) => panic!("message {k}: {e}"),
        }
    }
    s.run_for(Duration::from_secs(5));
    assert_all_in_order(&Transport::Rtc, &received(&s, 1, b_id), count);
    for i in 0..2 {
        let ended = s.events[i]
            .iter()
            .any(|(_, e)| matches!(e, Event::Closed { .. } | Event::Failed { .. }));
        assert!(!ended, "node {i}'s connection ended: {:#?}", s.events[i]);
    }
}
