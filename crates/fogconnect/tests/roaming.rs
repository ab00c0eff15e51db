//! Rebinding and roaming under a connection, in the simulator (issue 15, part 3): a NAT that
//! moves our mapping to a new port, a NAT that forgets an idle flow, and a host that moves to
//! another router, each with data flowing both ways over a reliable transport. Every byte sent
//! through the API arrives intact and in order on the same handle, the connection never ends,
//! traffic resumes within 2 s of the change (QUIC 2.5 s, SCTP and RTC 3.5 s: see `roam_with`),
//! and the path is direct again.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use fog_examples::scenario::{Profile, Scenario, SimNode};
use fog_sim::NodeId;
use fog_sim::presets::Preset;
use fogconnect::{CandidateKind, ConnectionId, Event, SendError, Transport};

/// What happens to node A's side mid-connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// A's NAT flushes its state and the old ports are taken: A's flows get new ports.
    Rebind,
    /// A's NAT forgets every flow (they expired while idle, or it rebooted); a port-preserving
    /// NAT gives the same ports back on the next datagram out.
    Expire,
    /// A moves behind another router of the same kind, with another public address.
    Move,
    /// Both NATs forget every flow at once (`conntrack -F` on both routers).
    ExpireBoth,
    /// The same, and B's signaling connection dies without B being told (the flush made B's
    /// router reset the server's next segment; B hears of it only if it sends).
    ExpireBothBreakingSignaling,
    /// Only B's signaling connection dies, without B being told (the flush cut it while the
    /// UDP flows came back on their ports): no path of B's notices anything.
    BreakBSignaling,
    /// Both NATs move every flow to new ports at once (`conntrack -F` on both routers while
    /// other hosts take the freed ports): the direct path and both TURN allocations are lost
    /// together, with signaling untouched. The route between the two sites drops UDP until
    /// the traffic stops: on netns_roaming's Linux routers the state the peer's datagrams left
    /// blocks a new direct pair for 35 s (NAT-NOTES), which this simulator's NATs do not
    /// model, so only a new allocation can carry the connection meanwhile.
    RebindBothRelayOnly,
    /// B's NAT moves B's flows to new ports (its TURN allocation too, which B makes again on
    /// a new relayed address) while A's signaling connection is cut: B's new candidates,
    /// trickled while A is away, must still reach A once it is back.
    RebindBWhileACutOff,
}

/// Who sends through the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    /// Both nodes.
    BothWays,
    /// Only A (B's transport only acknowledges).
    AToB,
}

/// Message `k`: its index, then bytes of a pattern, up to about one datagram long.
fn message(k: u32) -> Vec<u8> {
    let len = 4 + (k as usize * 7919) % 1500;
    let mut m = k.to_be_bytes().to_vec();
    m.extend((0..len - 4).map(|i| (i as u32).wrapping_mul(31).wrapping_add(k) as u8));
    m
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

/// Data received, with when.
type Received = Vec<(Instant, Vec<u8>)>;

/// Data node `i` received on `id`, with when.
fn received(s: &Scenario, i: usize, id: ConnectionId) -> Received {
    s.events[i]
        .iter()
        .filter_map(|(at, e)| match e {
            Event::Data { id: c, data } if *c == id => Some((*at, data.clone())),
            _ => None,
        })
        .collect()
}

/// KCP keeps each message whole; uTP and QUIC are byte streams.
fn assert_all_in_order(transport: &Transport, got: &[(Instant, Vec<u8>)], count: u32, who: &str) {
    let got: Vec<u8> = got.iter().flat_map(|(_, d)| d.iter().copied()).collect();
    let want: Vec<u8> = (0..count).flat_map(message).collect();
    assert_eq!(
        got.len(),
        want.len(),
        "{who}: bytes received over {transport:?}"
    );
    assert!(got == want, "{who}: the byte stream differs");
}

/// Longest time without data arriving at node `i` between `from` and `to`.
fn longest_gap(got: &[(Instant, Vec<u8>)], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut gap = Duration::ZERO;
    for &(at, _) in got.iter().filter(|(at, _)| *at > from && *at <= to) {
        gap = gap.max(at - last);
        last = at;
    }
    gap.max(to.saturating_duration_since(last))
}

/// A router like `preset`'s, on another public address, for node A to move to.
fn another_router(s: &mut Scenario, preset: Preset) -> NodeId {
    let [config] = <[_; 1]>::try_from(preset.nats()).expect("a single-NAT preset");
    let link = fog_sim::link::LinkConfig::with_latency(Duration::from_millis(10));
    s.sim.add_nat(
        "a-nat-2",
        NodeId::INTERNET,
        IpAddr::from([203, 0, 113, 101]),
        config,
        link,
    )
}

/// A connects to B over `transport`, both send for `before`, `change` happens to A, both send
/// on, then everything drains.
/// Each new server-reflexive candidate a node announces withdraws the one it announced before
/// (the first is `Ready`'s): the peer must not keep checking a mapping the NAT dropped, nor
/// be told to drop one that is still ours.
fn advertised_mappings_follow_each_other(events: &[(Instant, Event)], i: usize) {
    let mut current = None;
    for (at, event) in events {
        match event {
            Event::Ready { public, .. } => current = *public,
            Event::CandidatesChanged { added, removed } => {
                for new in added
                    .iter()
                    .filter(|c| c.kind == CandidateKind::ServerReflexive)
                {
                    if let Some(old) = current.filter(|old| *old != new.addr) {
                        assert!(
                            removed.contains(&old),
                            "node {i} at {at:?}: {} announced, {old} (announced before) not                              withdrawn but {removed:?}",
                            new.addr
                        );
                    }
                    current = Some(new.addr);
                }
            }
            _ => {}
        }
    }
}

/// The fogconnect this test links was built from this checkout, not from another one sharing
/// the target directory (see `fogconnect::BUILT_FROM`): such a build once ran the relay code of
/// before a fix under the test of the fix, and looked like a simulator that had stopped
/// replaying its seed.
fn same_checkout() {
    assert_eq!(
        fogconnect::BUILT_FROM,
        env!("CARGO_MANIFEST_DIR"),
        "fogconnect was compiled in another checkout than this test: a target directory shared \
         between checkouts (cargo judges a workspace member fresh by mtime, whichever checkout \
         built it); give each checkout its own target directory, or touch the sources"
    );
}

fn roam(transport: Transport, a: Preset, b: Preset, change: Change, seed: u64) {
    roam_with(transport, a, b, change, Flow::BothWays, seed);
}

fn roam_with(transport: Transport, a: Preset, b: Preset, change: Change, flow: Flow, seed: u64) {
    roam_traced(transport, a, b, change, flow, seed, false);
}

/// What a run left to compare with another run of the same seed: the simulator's trace (empty
/// unless asked for) and both nodes' events, each at its virtual time.
#[derive(Debug, PartialEq, Eq)]
struct Replay {
    trace: Vec<u8>,
    events: Vec<String>,
}

fn roam_traced(
    transport: Transport,
    a: Preset,
    b: Preset,
    change: Change,
    flow: Flow,
    seed: u64,
    trace: bool,
) -> Replay {
    same_checkout();
    let profile = Profile {
        loss: 0.0,
        ..Profile::default()
    };
    let mut s = Scenario::new(a, b, seed, &profile);
    let router = (change == Change::Move).then(|| another_router(&mut s, a));
    if trace || std::env::var("ROAM_TRACE").is_ok() {
        s.sim.enable_trace();
    }
    assert!(s.wait_ready(), "both nodes ready");
    let to = s.hosts[1].1;
    let a_id = s
        .sim
        .with_machine(s.hosts[0].0, |m: &mut SimNode, now| {
            m.node.connect_with(now, to, 1, transport.clone())
        })
        .expect("A may connect");
    connected(&mut s, 0, Duration::from_secs(15));
    let b_id = connected(&mut s, 1, Duration::from_secs(15));
    // Direct first.
    s.run_for(Duration::from_secs(2));
    for i in 0..2 {
        let paths = s.paths(i);
        assert!(
            paths.last().is_some_and(|p| !p.3),
            "node {i} direct before the change: {paths:?}"
        );
    }
    let ids = [a_id, b_id];
    let mut next = [0u32; 2];
    let step = Duration::from_millis(20);
    let mut pump = |s: &mut Scenario, d: Duration| {
        for _ in 0..(d.as_millis() / step.as_millis()) {
            let senders = if flow == Flow::BothWays { 2 } else { 1 };
            for i in 0..senders {
                let m = message(next[i]);
                match s.with_node(i, |n, now| n.send(now, ids[i], &m)) {
                    Ok(()) => next[i] += 1,
                    Err(SendError::Blocked) => {}
                    Err(e) => panic!("node {i}, message {}: {e}", next[i]),
                }
            }
            s.run_for(step);
        }
    };
    pump(&mut s, Duration::from_secs(3));
    // Each site's public address, as the other saw it.
    let publics = [s.paths(1)[0].2.ip(), s.paths(0)[0].2.ip()];
    let at = s.sim.now();
    let nat = s.sites[0].middleboxes[0];
    match change {
        Change::Rebind => s.sim.rebind_nat(nat),
        Change::Expire => s.sim.reset_nat(nat),
        Change::Move => s
            .sim
            .move_host(s.sites[0].host, router.expect("made above")),
        Change::ExpireBoth => {
            s.sim.reset_nat(nat);
            s.sim.reset_nat(s.sites[1].middleboxes[0]);
        }
        Change::ExpireBothBreakingSignaling => {
            s.sim.reset_nat(nat);
            s.sim.reset_nat(s.sites[1].middleboxes[0]);
            s.sim.signal_break(s.hosts[1].0);
        }
        Change::BreakBSignaling => s.sim.signal_break(s.hosts[1].0),
        Change::RebindBothRelayOnly => {
            s.sim.rebind_nat(nat);
            s.sim.rebind_nat(s.sites[1].middleboxes[0]);
            s.sim.set_blackhole(publics[0], publics[1], true);
        }
        Change::RebindBWhileACutOff => {
            s.sim.rebind_nat(s.sites[1].middleboxes[0]);
            s.sim.signal_sever(s.hosts[0].0);
        }
    }
    pump(&mut s, Duration::from_secs(6));
    let stopped = s.sim.now();
    s.sim.set_blackhole(publics[0], publics[1], false);
    s.run_for(Duration::from_secs(45));
    if let Ok(path) = std::env::var("ROAM_TRACE") {
        std::fs::write(path, s.sim.trace()).expect("trace");
    }

    for i in 0..2 {
        advertised_mappings_follow_each_other(&s.events[i], i);
    }
    for i in 0..2 {
        let ended = s.events[i]
            .iter()
            .any(|(_, e)| matches!(e, Event::Closed { .. } | Event::Failed { .. }));
        assert!(!ended, "node {i}'s connection ended: {:#?}", s.events[i]);
    }
    if change == Change::RebindBothRelayOnly {
        for i in 0..2 {
            let lost = s.with_node(i, |n, _| n.counters().relays_lost);
            assert!(lost >= 1, "node {i}'s TURN allocation was lost: {lost}");
        }
    }
    let (to_b, to_a) = (received(&s, 1, b_id), received(&s, 0, a_id));
    assert_all_in_order(&transport, &to_b, next[0], "A to B");
    assert_all_in_order(&transport, &to_a, next[1], "B to A");
    // B's path follows A within 2 s: to A's new port after a rebinding, to its new router's
    // address after a move (an expired flow comes back on the same port).
    let old = s.paths(1)[0].2;
    let b_path_at = |t: Instant| {
        s.paths(1)
            .iter()
            .rfind(|p| p.0 <= t)
            .map(|p| (p.2, p.3))
            .expect("B had a path")
    };
    let (remote, relayed) = b_path_at(at + Duration::from_secs(2));
    let moved = match change {
        Change::Rebind => remote.ip() == old.ip() && remote.port() != old.port(),
        Change::Expire | Change::BreakBSignaling => remote == old,
        Change::Move => remote.ip() != old.ip(),
        // Each NAT kept state for the other's datagrams, so each host's flow to the other
        // moves to a new port that neither knows: the relay carries it meanwhile.
        Change::ExpireBoth | Change::ExpireBothBreakingSignaling => relayed,
        // Both ports moved, the relayed addresses too: a relay pair on a new allocation (or a
        // direct pair on the new ports) within 2 s.
        Change::RebindBothRelayOnly => relayed || remote != old,
        // A did not move: B's path goes back to it, through the relay meanwhile.
        Change::RebindBWhileACutOff => remote == old || relayed,
    };
    assert!(
        moved
            && (!relayed
                || matches!(
                    change,
                    Change::ExpireBoth
                        | Change::ExpireBothBreakingSignaling
                        | Change::RebindBothRelayOnly
                        | Change::RebindBWhileACutOff
                )),
        "{change:?} over {transport:?}: B's path 2 s later: {remote} (was {old}): {:?}",
        s.paths(1)
    );
    if matches!(
        change,
        Change::BreakBSignaling | Change::ExpireBothBreakingSignaling
    ) {
        // BreakBSignaling: B's stream goes on; the server silent for 0.8 s under it has B
        // probe, and the unanswered probe (0.4 s) ends the connection. ExpireBothBreaking-
        // Signaling: B's silent path (0.7 s) has it probe; the unanswered probe ends it, and a
        // new one is up three round trips later (1.34 s after the break rather than whenever
        // B next had something to say: never, in this test). Back within 1.5 s either way.
        let up = s.events[1]
            .iter()
            .find(|(t, e)| *t > at && *e == Event::SignalingUp)
            .map(|(t, _)| *t - at);
        assert!(
            up.is_some_and(|d| d <= Duration::from_millis(1_500)),
            "{change:?}: B's signaling back {up:?} after the break"
        );
    }
    let directions: &[(&str, &Received)] = match flow {
        Flow::BothWays => &[("B", &to_b), ("A", &to_a)],
        Flow::AToB => &[("B", &to_b)],
    };
    for &(who, got) in directions {
        let gap = longest_gap(got, at, stopped);
        // QUIC's probe timeout backs off while the path is broken (RFC 9002 §6.2.1) and only
        // an acknowledgement resets it; the node sends QUIC's last datagrams again when the
        // path changes (`node/quic.rs`), whose acknowledgement does, but QUIC's own
        // retransmissions then start from the minimum window: 1.5-2.1 s here (it was over the
        // whole 6 s of traffic before).
        // SCTP (sctp-proto, and str0m's under RTC) has no handle to restart its
        // retransmission timer, backed off while the path was broken; its maximum RTO bounds
        // it: 3.0 s here for both. Not fixed yet.
        let limit = match transport {
            Transport::Quic => Duration::from_millis(2_500),
            Transport::Sctp | Transport::Rtc => Duration::from_millis(3_500),
            _ => Duration::from_secs(2),
        };
        assert!(
            gap <= limit,
            "{change:?} over {transport:?}: {who} received nothing for {gap:?} (paths A {:?}, B {:?})",
            s.paths(0),
            s.paths(1),
        );
    }
    for i in 0..2 {
        let paths = s.paths(i);
        assert!(
            paths.last().is_some_and(|p| !p.3),
            "node {i} direct again: {paths:?}"
        );
    }
    let events = (0..2)
        .flat_map(|i| {
            let s = &s;
            s.events[i]
                .iter()
                .map(move |(at, e)| format!("{i} {:?} {e:?}", s.sim.time_of(*at)))
        })
        .collect();
    Replay {
        trace: s.sim.trace().to_vec(),
        events,
    }
}

#[test]
fn kcp_survives_a_rebinding() {
    roam(
        Transport::Kcp,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Rebind,
        21,
    );
}

#[test]
fn utp_survives_a_rebinding() {
    roam(
        Transport::Utp,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Rebind,
        22,
    );
}

#[test]
fn quic_survives_a_rebinding() {
    roam(
        Transport::Quic,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Rebind,
        23,
    );
}

#[test]
fn kcp_survives_an_expired_flow() {
    roam(
        Transport::Kcp,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Expire,
        24,
    );
}

#[test]
fn utp_survives_an_expired_flow() {
    roam(
        Transport::Utp,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Expire,
        25,
    );
}

#[test]
fn quic_survives_an_expired_flow() {
    roam(
        Transport::Quic,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Expire,
        26,
    );
}

#[test]
fn kcp_survives_a_move_to_another_router() {
    roam(
        Transport::Kcp,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Move,
        27,
    );
}

#[test]
fn utp_survives_a_move_to_another_router() {
    roam(
        Transport::Utp,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Move,
        28,
    );
}

#[test]
fn quic_survives_a_move_to_another_router() {
    roam(
        Transport::Quic,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Move,
        29,
    );
}

/// `conntrack -F` on two Linux routers during a one-way transfer (fog-cli's netns_roaming test
/// in the simulator): a NAT that gets the peer's datagrams before its host sends anything keeps
/// state for them and maps the host's next flow to the peer onto a new port (NAT-NOTES); B,
/// which only acknowledges, must notice that the transfer stopped.
#[test]
fn kcp_survives_both_routers_forgetting_a_one_way_transfer() {
    roam_with(
        Transport::Kcp,
        Preset::PortRestrictedConeInboundState,
        Preset::PortRestrictedConeInboundState,
        Change::ExpireBoth,
        Flow::AToB,
        30,
    );
}

#[test]
fn utp_survives_both_routers_forgetting_a_one_way_transfer() {
    roam_with(
        Transport::Utp,
        Preset::PortRestrictedConeInboundState,
        Preset::PortRestrictedConeInboundState,
        Change::ExpireBoth,
        Flow::AToB,
        31,
    );
}

#[test]
fn quic_survives_both_routers_forgetting_a_one_way_transfer() {
    roam_with(
        Transport::Quic,
        Preset::PortRestrictedConeInboundState,
        Preset::PortRestrictedConeInboundState,
        Change::ExpireBoth,
        Flow::AToB,
        32,
    );
}

/// The same, when the flush also broke the receiver's signaling connection without its
/// knowing (fog-cli's netns_roaming test: fogd's log had it back only 3.5-4.9 s after the
/// flush in half the runs, when the transfer's close finally went out on it).
#[test]
fn kcp_survives_both_routers_forgetting_a_one_way_transfer_and_signaling() {
    roam_with(
        Transport::Kcp,
        Preset::PortRestrictedConeInboundState,
        Preset::PortRestrictedConeInboundState,
        Change::ExpireBothBreakingSignaling,
        Flow::AToB,
        30,
    );
}

/// B's signaling connection alone dies under a transfer, B not told (fog-cli's netns_roaming
/// test when the flush cut it but every UDP flow came back on its port): B's stream has it
/// probe the silent server.
#[test]
fn kcp_transfer_with_the_receivers_signaling_broken_under_it() {
    roam_with(
        Transport::Kcp,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::BreakBSignaling,
        Flow::AToB,
        35,
    );
}

/// `conntrack -F` on both routers when other hosts take the freed ports (fog-cli's
/// netns_roaming test when the flush did not cut signaling): the direct path and both TURN
/// allocations are lost at once. Each node learns its new port from its keepalive Binding
/// once the path went silent, refreshes its allocation, gets 437 (RFC 8656 §7.3) and
/// allocates again at once. The relay path is back 1.44 s after the change: the silence
/// (0.7 s), the keepalive Binding's round trip (70 ms), the Refresh and its 437 (70 ms, 140 ms
/// when the nonce is stale), credentials over signaling (60-80 ms), two Allocates (the 401
/// challenge, 140 ms), the trickle to the peer (70 ms), a CreatePermission (70 ms) and the
/// relayed check. Waiting the 1 s retry back-off before allocating again put it at 2.69 s,
/// past the 2 s that `roam_with` asserts (B went 4.0 s without data; 1.76 s now).
#[test]
fn kcp_survives_both_routers_rebinding_a_one_way_transfer() {
    roam_with(
        Transport::Kcp,
        Preset::PortRestrictedConeInboundState,
        Preset::PortRestrictedConeInboundState,
        Change::RebindBothRelayOnly,
        Flow::AToB,
        34,
    );
}

/// A seed replays exactly: the same scenario run twice in one process, with another epoch
/// (`Instant::now()` when the simulator is made) and other keys for every std `HashMap` (each
/// `RandomState` of a thread takes new ones), gives the same trace byte for byte and the same
/// events at the same virtual times. A decision that read the absolute clock, process-wide
/// state, or the iteration order of a randomly keyed map would show here. (This scenario
/// once failed 10 runs in a row while passing elsewhere on the same commit; the cause was a
/// stale build from another checkout, see `same_checkout`, not the simulator.)
#[test]
fn a_seed_replays_exactly() {
    let run = || {
        roam_traced(
            Transport::Kcp,
            Preset::PortRestrictedConeInboundState,
            Preset::PortRestrictedConeInboundState,
            Change::RebindBothRelayOnly,
            Flow::AToB,
            34,
            true,
        )
    };
    let first = run();
    let second = run();
    assert!(!first.trace.is_empty(), "the trace was recorded");
    if let Some(at) = first
        .events
        .iter()
        .zip(&second.events)
        .position(|(a, b)| a != b)
    {
        panic!(
            "the second run's events part at #{at}: {} / {}",
            first.events[at], second.events[at]
        );
    }
    assert_eq!(first.events.len(), second.events.len(), "as many events");
    if let Some(at) = first
        .trace
        .iter()
        .zip(&second.trace)
        .position(|(a, b)| a != b)
    {
        let line = |t: &[u8]| {
            let start = t[..at]
                .iter()
                .rposition(|&c| c == b'\n')
                .map_or(0, |p| p + 1);
            let end = t[at..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(t.len(), |p| at + p);
            String::from_utf8_lossy(&t[start..end]).into_owned()
        };
        panic!(
            "the traces part at byte {at}:\n{}\n{}",
            line(&first.trace),
            line(&second.trace)
        );
    }
    assert_eq!(first.trace.len(), second.trace.len(), "traces as long");
}

/// The flaky netns_roaming runs in the simulator: the flush that moved one node's ports (its
/// relayed address too) also cut the other node's signaling connection. The cut node comes
/// back to the server a second or so later, and must still learn the peer's new candidates
/// to find a path again.
#[test]
fn kcp_survives_a_rebinding_while_the_peer_is_cut_off_from_signaling() {
    roam(
        Transport::Kcp,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::RebindBWhileACutOff,
        33,
    );
}

#[test]
fn sctp_survives_a_rebinding() {
    roam(
        Transport::Sctp,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Rebind,
        34,
    );
}

#[test]
fn sctp_survives_a_move_to_another_router() {
    roam(
        Transport::Sctp,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Move,
        35,
    );
}

#[test]
fn rtc_survives_a_rebinding() {
    roam(
        Transport::Rtc,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Rebind,
        36,
    );
}

#[test]
fn rtc_survives_a_move_to_another_router() {
    roam(
        Transport::Rtc,
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        Change::Move,
        37,
    );
}

/// A's NAT moves its flows twice, 8 s apart, each time under 3 s of traffic from A: each new
/// mapping the keepalive finds replaces the one announced before it, and the last one
/// announced is where B's path to A ends, 90 s later.
///
/// The second rebinding comes while the relay carries the connection, so A learns its third
/// mapping only from its keepalive (21.4 s) and B checks it as soon as the trickle lands.
/// Those checks used to reach A's NAT before A had sent anything from that mapping to B:
/// unsolicited, they left state that moved A's flow to B onto another port, and B's checks of
/// every later round (20 s apart, under the 30 s that state lasts) refreshed it: both sides
/// stayed on TURN for the 90 s, each round ending in `DirectFailed`. Now A opens the new
/// mapping toward B with low-TTL checks the moment it learns it (`Agent::mapping_changed`),
/// and the path is direct again 0.1 s later (21.5 s).
#[test]
fn two_rebindings_in_a_row_withdraw_each_mapping_in_turn() {
    same_checkout();
    let profile = Profile {
        loss: 0.0,
        ..Profile::default()
    };
    let preset = Preset::PortRestrictedConeInboundState;
    let mut s = Scenario::new(preset, preset, 5, &profile);
    assert!(s.wait_ready(), "both nodes ready");
    let to = s.hosts[1].1;
    let a_id = s
        .sim
        .with_machine(s.hosts[0].0, |m: &mut SimNode, now| {
            m.node.connect_with(now, to, 1, Transport::Kcp)
        })
        .expect("A may connect");
    connected(&mut s, 0, Duration::from_secs(15));
    connected(&mut s, 1, Duration::from_secs(15));
    let nat = s.sites[0].middleboxes[0];
    let mut k = 0;
    let times = 2;
    for _ in 0..times {
        s.run_for(Duration::from_secs(5));
        s.sim.rebind_nat(nat);
        for _ in 0..150 {
            let _ = s.with_node(0, |n, now| n.send(now, a_id, &message(k)));
            k += 1;
            s.run_for(Duration::from_millis(20));
        }
    }
    s.run_for(Duration::from_secs(90));
    advertised_mappings_follow_each_other(&s.events[0], 0);
    let announced: Vec<_> = s.events[0]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::CandidatesChanged { added, .. } => added
                .iter()
                .find(|c| c.kind == CandidateKind::ServerReflexive)
                .map(|c| c.addr),
            _ => None,
        })
        .collect();
    assert_eq!(
        announced.len(),
        times,
        "one new mapping per rebinding: {announced:?}"
    );
    let b_sees = s.paths(1).last().expect("B has a path").2;
    assert_eq!(
        Some(&b_sees),
        announced.last(),
        "B's path to A ends on A's last announced mapping (paths of B {:?}, A {:?})",
        s.paths(1),
        s.paths(0)
    );
}

/// Two nodes behind port-restricted cones on lossless links, connected (seed 36); A's
/// connection.
fn lossless_connected_pair() -> (Scenario, ConnectionId) {
    let profile = Profile {
        loss: 0.0,
        ..Profile::default()
    };
    let mut s = Scenario::new(
        Preset::PortRestrictedCone,
        Preset::PortRestrictedCone,
        36,
        &profile,
    );
    assert!(s.wait_ready(), "both nodes ready");
    let a = s.connect().1;
    connected(&mut s, 0, Duration::from_secs(15));
    connected(&mut s, 1, Duration::from_secs(15));
    (s, a)
}

/// The signaling probes cost a node nothing while it has no traffic: two connected nodes,
/// idle for a minute, send the server no ping (its own pings, answered, are all there is),
/// while a minute of a one-way stream has the receiver ping about once a second.
#[test]
fn signaling_is_probed_under_traffic_only() {
    same_checkout();
    let (mut s, a) = lossless_connected_pair();
    s.run_for(Duration::from_secs(2));
    let pings = |s: &mut Scenario, i: usize| {
        s.sim.with_machine(s.hosts[i].0, |m: &mut SimNode, _| {
            let pings = m.log.as_ref().map_or(0, |l| {
                l.frames
                    .iter()
                    .filter(|f| f.contains("\"type\":\"ping\""))
                    .count()
            });
            m.log = Some(Default::default());
            pings
        })
    };
    pings(&mut s, 0);
    pings(&mut s, 1);
    s.run_for(Duration::from_secs(60));
    assert_eq!((pings(&mut s, 0), pings(&mut s, 1)), (0, 0), "idle");
    let step = Duration::from_millis(20);
    for k in 0..3_000 {
        let _ = s.with_node(0, |n, now| n.send(now, a, &message(k)));
        s.run_for(step);
    }
    let (sender, receiver) = (pings(&mut s, 0), pings(&mut s, 1));
    assert!(
        (40..=80).contains(&receiver) && sender <= 80,
        "a minute of traffic: {sender} and {receiver} pings"
    );
}

/// Datagrams `i` received on `id` since event `mark`.
fn data_since(s: &Scenario, i: usize, id: ConnectionId, mark: usize) -> Vec<Vec<u8>> {
    s.events[i][mark..]
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Data { id: c, data } if *c == id => Some(data.clone()),
            _ => None,
        })
        .collect()
}

/// A connection carried by the signaling relay (UDP blocked on A's side) outlives a signaling
/// reconnect: the server holds the answered session for the peer that left (`rejoin_grace`),
/// so what A sends over the new connection still reaches B on the same handles. Before, the
/// reconnect closed it (`SignalingLost`), and a probe that only found a busy server (a late
/// pong) did the same to every such connection.
#[test]
fn a_connection_on_the_signaling_relay_survives_a_signaling_reconnect() {
    let mut s = Scenario::new(Preset::UdpBlocked, Preset::FullCone, 5, &Profile::default());
    assert!(s.wait_ready(), "both nodes ready");
    let a = s.connect().1;
    connected(&mut s, 0, Duration::from_secs(10));
    let b = connected(&mut s, 1, Duration::from_secs(10));
    assert!(
        s.events[0].iter().any(|(_, e)| matches!(
            e,
            Event::Connected {
                via: fogconnect::Via::Signaling,
                ..
            }
        )),
        "on the signaling relay: {:?}",
        s.events[0]
    );
    let mark = (s.events[0].len(), s.events[1].len());
    s.sim.signal_sever(s.hosts[0].0);
    s.run_for(Duration::from_secs(2));
    let back = s.events[0][mark.0..]
        .iter()
        .filter(|(_, e)| matches!(e, Event::SignalingUp))
        .count();
    assert_eq!(back, 1, "A reconnected: {:?}", &s.events[0][mark.0..]);
    for k in 0..5u32 {
        s.with_node(0, |n, now| n.send(now, a, &k.to_be_bytes()))
            .expect("A's connection is still there");
        s.with_node(1, |n, now| n.send(now, b, &(100 + k).to_be_bytes()))
            .expect("B's connection is still there");
    }
    s.run_for(Duration::from_secs(3));
    let ended = |i: usize| {
        s.events[i][..]
            .iter()
            .any(|(_, e)| matches!(e, Event::Closed { .. } | Event::Failed { .. }))
    };
    assert!(
        !ended(0) && !ended(1),
        "{:?}\n{:?}",
        s.events[0],
        s.events[1]
    );
    let want = |from: u32| (from..from + 5).map(|k| k.to_be_bytes().to_vec());
    assert_eq!(data_since(&s, 1, b, mark.1), want(0).collect::<Vec<_>>());
    assert_eq!(data_since(&s, 0, a, mark.0), want(100).collect::<Vec<_>>());
}

/// A busy signaling server: A's signaling link goes from 30 ms to 700 ms one way and back,
/// every 3 s for a minute (frames stay in order, as over TCP), while a transfer has A probe
/// the quiet server about once a second. A pong 1.4 s late after a fast spell timed out and
/// closed a connection that was alive: a reconnect per slow spell (10 in this minute). The
/// probe's floor now doubles after each miss and comes back down slowly (50 ms per pong in
/// time): 4 (at 0, 6.5 and 13.3 s, when it reached 3.2 s; then at 55 s, decayed).
#[test]
fn a_slow_server_does_not_have_a_node_reconnect_again_and_again() {
    let (mut s, a) = lossless_connected_pair();
    s.run_for(Duration::from_secs(1));
    let mark = s.events[0].len();
    let step = Duration::from_millis(20);
    for k in 0..3_000 {
        if k % 150 == 0 {
            let one_way = if k % 300 == 0 { 700 } else { 30 };
            s.sim.set_signal_link(
                s.hosts[0].0,
                fog_sim::signal::SignalLink::with_latency(Duration::from_millis(one_way)),
            );
        }
        let _ = s.with_node(0, |n, now| n.send(now, a, &message(k)));
        s.run_for(step);
    }
    let downs = s.events[0][mark..]
        .iter()
        .filter(|(_, e)| matches!(e, Event::SignalingDown))
        .count();
    eprintln!("a minute with a slow server: {downs} reconnects");
    assert!(downs <= 4, "{downs} reconnects in a minute");
}
