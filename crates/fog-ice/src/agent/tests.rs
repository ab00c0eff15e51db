//! The agent's unit tests: pairs of agents on a wire of their own.

// Tests take any epoch.
#![allow(clippy::disallowed_methods)]

use fog_core::nat::Behaviour;
use fog_core::pairing::Who;

use super::*;
use crate::strategy::StrategyConfig;

/// Steps of [`Wire::run`] at one instant before it calls the timers stuck.
const MAX_STEPS_AT_ONE_INSTANT: u32 = 10_000;

const A: &str = "192.0.2.1:1000";
const B: &str = "192.0.2.2:2000";

fn creds(name: &str) -> Credentials {
    Credentials {
        ufrag: format!("{name}ufrag"),
        pwd: format!("{name}-a-password-of-22-chars"),
    }
}

fn agent(me: &str, peer: &str, controlling: bool, seed: u64) -> Agent {
    let who = if controlling { Who::A } else { Who::B };
    let plan = Plan::new(
        Behaviour::Open,
        Behaviour::Open,
        who,
        &StrategyConfig::default(),
    );
    let (mine, theirs) = if controlling { ("a", "b") } else { ("b", "a") };
    let mut agent = Agent::new(AgentConfig::new(
        creds(mine),
        creds(theirs),
        controlling,
        me.parse().unwrap(),
        plan,
        seed,
    ));
    agent.add_remote(
        Instant::now(),
        Candidate::new(Kind::ServerReflexive, peer.parse().unwrap()),
    );
    agent
}

/// A (controlling) and B (controlled) on a wire, B with a relayed candidate at the relay
/// address returned, which A knows.
fn with_b_relayed() -> (Wire, SocketAddr) {
    let relay = addr("198.51.100.50:3478");
    let mut a = agent(A, B, true, 1);
    let mut b = agent(B, A, false, 2);
    let now = Instant::now();
    b.set_relayed(now, relay);
    a.add_remote(now, Candidate::new(Kind::Relayed, relay));
    (Wire::new(a, b), relay)
}

/// Two agents on one wire; `deliver` decides which datagrams arrive, `delay` how late (one
/// way, by the datagram's source and destination; 5 ms unless set). A datagram to an
/// address that is not one of the other agent's sockets is lost.
struct Wire {
    a: Agent,
    b: Agent,
    now: Instant,
    events: Vec<(Instant, bool, Event)>,
    delay: Box<dyn Fn(SocketAddr, SocketAddr) -> Duration>,
    /// Every datagram sent: (when, from A, destination, TTL hint).
    sent: Vec<(Instant, bool, SocketAddr, Option<u8>)>,
    /// Whether a datagram from the first address to the second gets through.
    pass: Box<dyn Fn(SocketAddr, SocketAddr) -> bool>,
    /// Whether a datagram sent with a TTL hint (a low-TTL probe or hold) dies on the way, as
    /// it does on a real path; off unless set (most tests predate it).
    low_ttl_dies: bool,
    /// A NAT that rebooted and mapped a socket's flow to one peer address anew, as (the
    /// socket, the peer address, its new outside address): what the socket sends there comes
    /// from the new address, what the peer address sends to the new one reaches the socket,
    /// and what it sends to the old one is lost. Other flows are as they were.
    remap: Option<(SocketAddr, SocketAddr, SocketAddr)>,
    /// Whether a datagram (sent by A when the flag is true, with these bytes) is lost
    /// whatever its addresses; none unless set.
    lose: Box<Lose>,
}

/// See [`Wire::lose`].
type Lose = dyn Fn(bool, &[u8]) -> bool;

impl Wire {
    fn new(a: Agent, b: Agent) -> Wire {
        Wire {
            a,
            b,
            now: Instant::now(),
            events: Vec::new(),
            delay: Box::new(|_, _| Duration::from_millis(5)),
            sent: Vec::new(),
            pass: Box::new(|_, _| true),
            low_ttl_dies: false,
            remap: None,
            lose: Box::new(|_, _| false),
        }
    }

    /// The Selected events of one side, as (our socket, the peer's).
    fn selections(&self, on_b: bool) -> Vec<(SocketAddr, SocketAddr)> {
        self.events
            .iter()
            .filter_map(|(_, b, e)| match e {
                Event::Selected { local, remote, .. } if *b == on_b => Some((*local, *remote)),
                _ => None,
            })
            .collect()
    }

    fn start(&mut self) {
        let now = self.now;
        self.a.start(now);
        self.b.start(now);
    }

    /// Runs until `until`, delivering each datagram after 5 ms unless `deliver` says no.
    fn run(&mut self, until: Duration, deliver: &mut dyn FnMut(Instant) -> bool) {
        let end = self.now + until;
        let mut in_flight: Vec<(Instant, bool, SocketAddr, SocketAddr, Vec<u8>)> = Vec::new();
        let mut buf = vec![0u8; 2048];
        // A timer that stays due after it fired would spin at one instant: fail instead.
        let (mut at, mut steps_at) = (self.now, 0u32);
        loop {
            if self.now == at {
                steps_at += 1;
                assert!(
                    steps_at <= MAX_STEPS_AT_ONE_INSTANT,
                    "the agents asked to be woken at {:?} (after the start) {MAX_STEPS_AT_ONE_INSTANT} times: a timer stuck at now",
                    self.now - end + until
                );
            } else {
                (at, steps_at) = (self.now, 1);
            }
            for (to_b, agent) in [(true, &mut self.a), (false, &mut self.b)] {
                agent.handle_timeout(self.now);
                while let Some(t) = agent.poll_transmit(self.now, &mut buf) {
                    self.sent.push((self.now, to_b, t.destination, t.hints.ttl));
                    let dies = self.low_ttl_dies && t.hints.ttl.is_some();
                    let source = match (t.source.unwrap(), self.remap) {
                        (s, Some((inside, peer, outside)))
                            if s == inside && t.destination == peer =>
                        {
                            outside
                        }
                        (s, _) => s,
                    };
                    let lost = (self.lose)(to_b, &buf[..t.len]);
                    if deliver(self.now) && !dies && !lost && (self.pass)(source, t.destination) {
                        in_flight.push((
                            self.now + (self.delay)(source, t.destination),
                            to_b,
                            source,
                            t.destination,
                            buf[..t.len].to_vec(),
                        ));
                    }
                }
                while let Some(e) = agent.poll_event() {
                    self.events.push((self.now, !to_b, e));
                }
                if let Some(t) = agent.poll_timeout() {
                    assert!(t >= self.now, "a timer in the past");
                }
            }
            let next_packet = in_flight.iter().map(|p| p.0).min();
            let next_timer = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            let Some(next) = [next_packet, next_timer].into_iter().flatten().min() else {
                break;
            };
            if next > end {
                break;
            }
            self.now = self.now.max(next);
            let due: Vec<_> = in_flight
                .iter()
                .filter(|p| p.0 <= self.now)
                .cloned()
                .collect();
            in_flight.retain(|p| p.0 > self.now);
            for (_, to_b, source, destination, bytes) in due {
                let agent = if to_b { &mut self.b } else { &mut self.a };
                let destination = match self.remap {
                    Some((inside, peer, _)) if source == peer && destination == inside => continue,
                    Some((inside, peer, outside)) if source == peer && destination == outside => {
                        inside
                    }
                    _ => destination,
                };
                if !agent.is_local(destination) {
                    continue;
                }
                agent.handle_packet(
                    self.now,
                    Receive {
                        source,
                        local: destination,
                        payload: &bytes,
                    },
                );
                // No timer in the past after a datagram either (the agent's timers do not
                // depend on what it has queued to send).
                if let Some(t) = agent.poll_timeout() {
                    assert!(t >= self.now, "a timer in the past after a datagram");
                }
            }
        }
        self.now = end;
    }

    fn selected(&self, on_b: bool) -> Option<Instant> {
        self.events
            .iter()
            .find_map(|(t, b, e)| (*b == on_b && matches!(e, Event::Selected { .. })).then_some(*t))
    }
}

#[test]
fn two_open_agents_select_the_path_with_its_rtt() {
    let mut wire = Wire::new(agent(A, B, true, 1), agent(B, A, false, 2));
    wire.start();
    wire.run(Duration::from_secs(1), &mut |_| true);
    assert!(wire.selected(false).is_some() && wire.selected(true).is_some());
    assert_eq!(
        wire.a.selected(),
        Some((A.parse().unwrap(), B.parse().unwrap()))
    );
    assert_eq!(
        wire.b.selected(),
        Some((B.parse().unwrap(), A.parse().unwrap()))
    );
    let rtt = wire.events.iter().find_map(|(_, _, e)| match e {
        Event::Validated { rtt, .. } => Some(*rtt),
        _ => None,
    });
    assert_eq!(rtt, Some(Duration::from_millis(10)));
    assert_eq!(
        wire.a.stats().unauthenticated + wire.b.stats().unauthenticated,
        0
    );
}

const A6: &str = "[2001:db8::a]:1000";
const B6: &str = "[2001:db8::b]:2000";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A dual-stack agent: its base (IPv4, behind `nat`) and an IPv6 socket; it knows the
/// peer's IPv4 srflx and, with `peer_v6`, the peer's IPv6 host candidate.
fn dual(controlling: bool, nat: Behaviour, peer_v6: bool) -> Agent {
    let (me, me6, peer, peer6) = if controlling {
        (A, A6, B, B6)
    } else {
        (B, B6, A, A6)
    };
    let who = if controlling { Who::A } else { Who::B };
    let plan = Plan::new(nat, nat, who, &StrategyConfig::default());
    let (mine, theirs) = if controlling { ("a", "b") } else { ("b", "a") };
    let mut config = AgentConfig::new(
        creds(mine),
        creds(theirs),
        controlling,
        addr(me),
        plan,
        u64::from(controlling) + 7,
    );
    config.hosts = vec![addr(me6)];
    let mut agent = Agent::new(config);
    let now = Instant::now();
    agent.add_remote(now, Candidate::new(Kind::ServerReflexive, addr(peer)));
    if peer_v6 {
        agent.add_remote(now, Candidate::new(Kind::Host, addr(peer6)));
    }
    agent
}

fn ipv6(a: SocketAddr, b: SocketAddr) -> bool {
    a.is_ipv6() || b.is_ipv6()
}

#[test]
fn ipv6_host_pairs_connect_where_ipv4_needs_a_relay() {
    // Both IPv4 NATs random-symmetric: the route is the relay's. Their IPv6 sockets pass
    // no NAT, and a check each way opens any firewall on the way.
    let symmetric = Behaviour::nat(
        fog_core::nat::Mapping::AddressAndPortDependent,
        fog_core::nat::Filtering::AddressAndPortDependent,
        fog_core::nat::PortPattern::Random,
    );
    assert!(!Plan::new(symmetric, symmetric, Who::A, &StrategyConfig::default()).is_direct());
    let mut wire = Wire::new(dual(true, symmetric, true), dual(false, symmetric, true));
    wire.start();
    wire.run(Duration::from_secs(1), &mut |_| true);
    assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
    assert_eq!(wire.b.selected(), Some((addr(B6), addr(A6))));
    assert!(!wire.a.selected_is_relayed());
}

/// Paths over IPv6 take `v6` one way, over IPv4 20 ms.
fn two_paths(wire: &mut Wire, v6: std::rc::Rc<std::cell::Cell<Duration>>) {
    wire.delay = Box::new(move |s, d| {
        if ipv6(s, d) {
            v6.get()
        } else {
            Duration::from_millis(20)
        }
    });
}

/// Two dual-stack agents without NATs, IPv6 `v6` one way (the cell changes it), run for
/// `run` from their start.
fn dual_wire(v6: Duration, run: Duration) -> (Wire, std::rc::Rc<std::cell::Cell<Duration>>) {
    let v6 = std::rc::Rc::new(std::cell::Cell::new(v6));
    let mut wire = Wire::new(
        dual(true, Behaviour::Open, true),
        dual(false, Behaviour::Open, true),
    );
    two_paths(&mut wire, v6.clone());
    wire.start();
    wire.run(run, &mut |_| true);
    (wire, v6)
}

#[test]
fn a_clearly_nearer_path_takes_over_on_both_sides() {
    let (mut wire, v6) = dual_wire(Duration::from_millis(60), Duration::from_secs(2));
    // The first burst checks both at once: the nearer (IPv4, 40 ms round trip) wins.
    assert_eq!(wire.a.selected(), Some((addr(A), addr(B))));
    assert_eq!(wire.b.selected(), Some((addr(B), addr(A))));
    // IPv6 becomes much nearer (10 ms against 40 ms).
    v6.set(Duration::from_millis(5));
    wire.run(Duration::from_secs(60), &mut |_| true);
    assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
    assert_eq!(wire.b.selected(), Some((addr(B6), addr(A6))));
    // It moved once, without flapping back.
    assert_eq!(wire.selections(false).last(), Some(&(addr(A6), addr(B6))));
    let moves = wire
        .selections(false)
        .windows(2)
        .filter(|w| w[0] != w[1])
        .count();
    assert_eq!(moves, 1, "{:?}", wire.selections(false));
}

#[test]
fn a_slightly_nearer_path_does_not_take_over() {
    let (mut wire, v6) = dual_wire(Duration::from_millis(60), Duration::from_secs(2));
    assert_eq!(wire.a.selected(), Some((addr(A), addr(B))));
    // 34 ms against 40 ms round trip: 15 % nearer, inside the hysteresis.
    v6.set(Duration::from_millis(17));
    wire.run(Duration::from_secs(60), &mut |_| true);
    assert_eq!(wire.a.selected(), Some((addr(A), addr(B))));
    assert_eq!(wire.b.selected(), Some((addr(B), addr(A))));
    // Both paths were kept alive and measured the whole time.
    assert!(wire.a.has_path(addr(A6), addr(B6)));
}

#[test]
fn a_lost_interface_moves_the_connection_to_the_other_path_at_once() {
    let (mut wire, _) = dual_wire(Duration::from_millis(2), Duration::from_secs(12));
    assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
    let now = wire.now;
    wire.a.remove_local(now, addr(A6));
    assert_eq!(wire.a.selected(), Some((addr(A), addr(B))));
    // The peer follows the nomination within a round trip or two.
    wire.run(Duration::from_millis(200), &mut |_| true);
    assert_eq!(wire.b.selected(), Some((addr(B), addr(A))));
    assert!(!wire.a.has_path(addr(A6), addr(B6)));

    // The interface comes back and is trickled again: its failed pairs get a new round,
    // and the nearer path takes over again once measured.
    let back = wire.now;
    wire.a.add_local(back, addr(A6));
    wire.b
        .add_remote(back, Candidate::new(Kind::Host, addr(A6)));
    wire.run(Duration::from_secs(30), &mut |_| true);
    assert!(
        wire.events.iter().any(|(t, on_b, e)| *t >= back
            && !on_b
            && matches!(e, Event::Validated { local, .. } if *local == addr(A6))),
        "A6 checked again"
    );
    assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
    assert_eq!(wire.b.selected(), Some((addr(B6), addr(A6))));
}

#[test]
fn one_lost_consent_check_does_not_move_the_path() {
    let (mut wire, _) = dual_wire(Duration::from_millis(2), Duration::from_secs(20));
    assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
    let before = [wire.selections(false).len(), wire.selections(true).len()];
    // Exactly one datagram from A's IPv6 socket to B's is lost.
    let lost = std::rc::Rc::new(std::cell::Cell::new(false));
    let l = lost.clone();
    wire.pass = Box::new(move |s, d| {
        if s == addr(A6) && d == addr(B6) && !l.get() {
            l.set(true);
            return false;
        }
        true
    });
    wire.run(Duration::from_secs(30), &mut |_| true);
    assert!(lost.get());
    let after = [wire.selections(false).len(), wire.selections(true).len()];
    assert_eq!(before, after, "no path change on either side");
}

/// Dual-stack agents without NATs, and B's TURN relayed address (30 ms away) that A knows.
fn relay_wire(v6: u64) -> Wire {
    const R: &str = "198.51.100.50:3478";
    let mut a = dual(true, Behaviour::Open, true);
    let mut b = dual(false, Behaviour::Open, true);
    let now = Instant::now();
    b.set_relayed(now, addr(R));
    a.add_remote(now, Candidate::new(Kind::Relayed, addr(R)));
    let mut wire = Wire::new(a, b);
    wire.delay = Box::new(move |s, d| {
        if s == addr(R) || d == addr(R) {
            Duration::from_millis(30)
        } else if ipv6(s, d) {
            Duration::from_millis(v6)
        } else {
            Duration::from_millis(20)
        }
    });
    wire
}

#[test]
fn after_every_direct_path_died_punching_resumes_when_they_come_back() {
    let relay: SocketAddr = "198.51.100.50:3478".parse().unwrap();
    let mut wire = relay_wire(17);
    wire.start();
    wire.run(Duration::from_secs(12), &mut |_| true);
    assert!(!wire.a.selected_is_relayed());
    // Every direct path dies at once; the relay carries on.
    let cut = std::rc::Rc::new(std::cell::Cell::new(true));
    let c = cut.clone();
    wire.pass = Box::new(move |s, d| !c.get() || s == relay || d == relay);
    wire.run(Duration::from_secs(60), &mut |_| true);
    assert!(
        wire.a.selected_is_relayed(),
        "on the relay during the outage"
    );
    // They come back: a later round of punching finds them.
    cut.set(false);
    wire.run(Duration::from_secs(60), &mut |_| true);
    assert!(wire.a.selected().is_some() && !wire.a.selected_is_relayed());
    assert!(wire.b.selected().is_some() && !wire.b.selected_is_relayed());
}

/// Every direct path dies at once (a route between the two sites goes down) while each
/// owner suspects its path (its traffic goes unanswered, as the node's stream does): the
/// connection moves to the relay within a few rounds. It used to move from the suspected
/// direct path to the other one, which had answered within two consent intervals but not
/// since the fault, then back once that one was suspected in turn, for as long as both
/// stayed "fresh" (found by the chaos run, seeds 65 and 662: 10 to 35 s on dead paths, the
/// streams stalled, gave up or lost what a close had not delivered).
#[test]
fn a_suspicion_moves_to_the_relay_when_every_direct_path_died() {
    let relay: SocketAddr = "198.51.100.50:3478".parse().unwrap();
    let mut wire = relay_wire(17);
    wire.start();
    wire.run(Duration::from_secs(12), &mut |_| true);
    assert!(!wire.a.selected_is_relayed() && !wire.b.selected_is_relayed());
    let before = [wire.selections(true).len(), wire.selections(false).len()];
    wire.pass = Box::new(move |s, d| s == relay || d == relay);
    // The owners suspect the path again whenever it is still silent, every 700 ms.
    for _ in 0..6 {
        let now = wire.now;
        wire.a.suspect(now);
        wire.b.suspect(now);
        wire.run(Duration::from_millis(700), &mut |_| true);
    }
    assert!(wire.a.selected_is_relayed(), "{:?}", wire.selections(true));
    assert!(wire.b.selected_is_relayed(), "{:?}", wire.selections(false));
    // Straight there, not by way of the other dead direct path.
    let moves = [
        wire.selections(true).len() - before[0],
        wire.selections(false).len() - before[1],
    ];
    assert_eq!(moves, [1, 1], "{:?}", wire.selections(true));
}

/// The controlling side's NAT reboots and maps its socket anew; the controlled side
/// suspects its path first (its stream went unanswered) and moves to the relay, while the
/// controlling side's path still works for it (its checks now come from the new port, and
/// the controlled side answers them). The controlled side must come back to the direct pair
/// the peer's checks arrive on: it answers them, and a check of its own proves the pair both
/// ways. It used to stay on the relay for good: that pair is peer-reflexive and was never
/// nominated (the controlling side sees nothing change and nominates nothing), and a
/// controlled agent takes only nominated pairs (found by the chaos run, seeds 922, 1248,
/// 1346, 1490 and 1608: one side direct, the other on TURN after a NAT reboot).
#[test]
fn a_controlled_side_on_the_relay_follows_the_peer_back_to_its_direct_pair() {
    let (mut wire, relay) = with_b_relayed();
    wire.delay = Box::new(move |s, d| {
        if s == relay || d == relay {
            Duration::from_millis(30)
        } else {
            Duration::from_millis(20)
        }
    });
    wire.start();
    wire.run(Duration::from_secs(12), &mut |_| true);
    assert_eq!(wire.b.selected(), Some((addr(B), addr(A))));
    // A's NAT reboots and maps A's flow to B anew: A's socket is 192.0.2.1:1001 to B from
    // now on (its flow to the relay is the relay's business: as it was).
    let moved = addr("192.0.2.1:1001");
    wire.remap = Some((addr(A), addr(B), moved));
    for _ in 0..4 {
        let now = wire.now;
        wire.b.suspect(now);
        wire.run(Duration::from_millis(700), &mut |_| true);
    }
    wire.run(Duration::from_secs(30), &mut |_| true);
    let b = wire.selections(true);
    assert!(b.contains(&(relay, addr(A))), "B went to the relay: {b:?}");
    assert_eq!(wire.b.selected(), Some((addr(B), moved)), "{b:?}");
    assert_eq!(
        wire.selections(false),
        [(addr(A), addr(B))],
        "A saw nothing"
    );
}

#[test]
fn ipv6_checks_do_not_use_up_the_single_ipv4_flow() {
    // Both sequential-symmetric: each side sends exactly one IPv4 flow, to the peer's
    // predicted port. The peer's IPv6 host candidate, listed first, must not take it.
    let sequential = Behaviour::nat(
        fog_core::nat::Mapping::AddressAndPortDependent,
        fog_core::nat::Filtering::AddressAndPortDependent,
        fog_core::nat::PortPattern::Sequential { delta: 1 },
    );
    let plan = Plan::new(sequential, sequential, Who::A, &StrategyConfig::default());
    assert!(plan.single_flow);
    let mut config = AgentConfig::new(creds("a"), creds("b"), true, addr(A), plan, 9);
    config.hosts = vec![addr(A6)];
    let mut agent = Agent::new(config);
    let now = Instant::now();
    let predicted: SocketAddr = "203.0.113.2:40001".parse().unwrap();
    agent.add_remote(now, Candidate::new(Kind::Host, addr(B6)));
    agent.add_remote(now, Candidate::new(Kind::Predicted, predicted));
    agent.start(now);
    let mut sent = HashSet::new();
    let mut buf = vec![0u8; 1500];
    let mut t = now;
    while t < now + Duration::from_secs(1) {
        agent.handle_timeout(t);
        while let Some(x) = agent.poll_transmit(t, &mut buf) {
            sent.insert(x.destination);
        }
        t = agent
            .poll_timeout()
            .unwrap_or(t)
            .max(t + Duration::from_millis(1));
    }
    assert!(sent.contains(&addr(B6)), "{sent:?}");
    assert!(sent.contains(&predicted), "{sent:?}");
    let ipv4: Vec<_> = sent.iter().filter(|d| d.is_ipv4()).collect();
    assert_eq!(ipv4, [&predicted], "one IPv4 flow, the route's");
}

#[test]
fn an_interface_found_later_is_checked_and_used() {
    // No IPv6 at first: the connection runs over IPv4.
    let mut a = dual(true, Behaviour::Open, false);
    a.remove_local(Instant::now(), addr(A6));
    let mut wire = Wire::new(a, dual(false, Behaviour::Open, false));
    two_paths(
        &mut wire,
        std::rc::Rc::new(std::cell::Cell::new(Duration::from_millis(2))),
    );
    wire.start();
    wire.run(Duration::from_secs(10), &mut |_| true);
    assert_eq!(wire.a.selected(), Some((addr(A), addr(B))));
    // A's IPv6 address comes up; it is trickled to B, and A learns B's.
    let now = wire.now;
    wire.a.add_local(now, addr(A6));
    wire.a.add_remote(now, Candidate::new(Kind::Host, addr(B6)));
    wire.b.add_remote(now, Candidate::new(Kind::Host, addr(A6)));
    wire.run(Duration::from_secs(1), &mut |_| true);
    assert!(
        wire.events.iter().any(|(t, _, e)| *t >= now
            && matches!(e, Event::Validated { local, .. } if *local == addr(A6)))
    );
    // Much nearer: it takes over once measured.
    wire.run(Duration::from_secs(30), &mut |_| true);
    assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
    assert_eq!(wire.b.selected(), Some((addr(B6), addr(A6))));
}

#[test]
fn between_rounds_our_nat_is_held_open_with_low_ttl_checks_only() {
    let mut wire = Wire::new(agent(A, B, true, 5), agent(B, A, false, 6));
    wire.start();
    let start = wire.now;
    // Nothing passes: the round ends after 5 s and the next is due 20 s later.
    wire.run(Duration::from_secs(40), &mut |_| false);
    let from_a: Vec<(Duration, Option<u8>)> = wire
        .sent
        .iter()
        .filter(|s| s.1 && s.2 == addr(B))
        .map(|s| (s.0 - start, s.3))
        .collect();
    let between = |from: u64, to: u64| {
        from_a
            .iter()
            .filter(move |s| s.0 > Duration::from_secs(from) && s.0 < Duration::from_secs(to))
    };
    // Between the rounds (5.5 s to 25 s): only low-TTL checks, every 10 s.
    let held: Vec<_> = between(6, 25).collect();
    assert!(!held.is_empty(), "{from_a:?}");
    assert!(held.iter().all(|s| s.1 == Some(3)), "{held:?}");
    assert!(
        held.iter().all(|s| s.0 >= Duration::from_secs(14)),
        "{held:?}"
    );
    // The next round punches in full again at 25 s.
    assert!(between(24, 27).any(|s| s.1.is_none()), "{from_a:?}");
}

/// Our NAT gave us a new mapping between rounds: at once, before the peer's checks of it
/// can arrive, a low-TTL check to the peer opens it (and nothing the peer's NAT would see).
#[test]
fn a_new_mapping_is_opened_toward_the_peer_at_once_with_low_ttl_only() {
    let mut wire = Wire::new(agent(A, B, true, 5), agent(B, A, false, 6));
    wire.start();
    let start = wire.now;
    // Nothing passes: the round ends after 5 s, the first hold is due at 15 s.
    wire.run(Duration::from_secs(8), &mut |_| false);
    let to_b = |wire: &Wire, from: Duration| -> Vec<(Duration, Option<u8>)> {
        wire.sent
            .iter()
            .filter(|s| s.1 && s.2 == addr(B) && s.0 - start >= from)
            .map(|s| (s.0 - start, s.3))
            .collect()
    };
    assert!(
        to_b(&wire, Duration::from_secs(6)).is_empty(),
        "{:?}",
        to_b(&wire, Duration::ZERO)
    );
    wire.a.mapping_changed();
    wire.run(Duration::from_millis(100), &mut |_| false);
    let opened = to_b(&wire, Duration::from_secs(8));
    assert_eq!(opened, [(Duration::from_secs(8), Some(3))]);
}

#[test]
fn consent_loss_is_noticed_within_the_timeout() {
    let mut wire = Wire::new(agent(A, B, true, 3), agent(B, A, false, 4));
    wire.start();
    wire.run(Duration::from_secs(1), &mut |_| true);
    assert!(wire.a.selected().is_some());
    // Consent checks keep it for a minute...
    wire.run(Duration::from_secs(60), &mut |_| true);
    assert!(wire.a.selected().is_some());
    assert!(
        !wire
            .events
            .iter()
            .any(|(_, _, e)| matches!(e, Event::PathLost { .. }))
    );
    // ...and a path that stops answering is lost after 30 s, not much later.
    let cut = wire.now;
    wire.run(Duration::from_secs(60), &mut |_| false);
    let lost = wire
        .events
        .iter()
        .find(|(_, on_b, e)| !on_b && matches!(e, Event::PathLost { .. }))
        .map(|(t, _, _)| *t - cut)
        .expect("A noticed the dead path");
    assert!(
        lost >= Duration::from_secs(25) && lost <= Duration::from_secs(31),
        "{lost:?}"
    );
    assert_eq!(wire.a.selected(), None);
}

#[test]
fn both_controlling_resolve_by_tie_breaker() {
    let mut b = agent(B, A, true, 6);
    // B believes it controls too, with a different tie-breaker and A's credentials swapped in.
    b.config.local = creds("b");
    b.config.remote = creds("a");
    b.local_key = IntegrityKey::short_term(&b.config.local.pwd);
    b.remote_key = IntegrityKey::short_term(&b.config.remote.pwd);
    let mut wire = Wire::new(agent(A, B, true, 5), b);
    wire.start();
    wire.run(Duration::from_secs(2), &mut |_| true);
    assert_ne!(wire.a.is_controlling(), wire.b.is_controlling());
    assert!(wire.a.selected().is_some() && wire.b.selected().is_some());
}

#[test]
fn unauthenticated_and_malformed_input_is_dropped_and_counted() {
    let mut a = agent(A, B, true, 7);
    let now = Instant::now();
    a.start(now);
    a.handle_timeout(now);
    let mut buf = vec![0u8; 2048];
    while a.poll_transmit(now, &mut buf).is_some() {}
    let from: SocketAddr = "198.51.100.9:9".parse().unwrap();
    let local: SocketAddr = A.parse().unwrap();
    // A check signed with the wrong password.
    let mut forged = Message::new(Class::Request, Method::BINDING, TransactionId::new([1; 12]));
    forged.attributes.username = Some("aufrag:bufrag".into());
    let bytes = forged
        .to_bytes(Some(&IntegrityKey::short_term("not-the-password-at-all")))
        .unwrap();
    // One with the right password but someone else's username.
    let mut wrong_user = forged.clone();
    wrong_user.attributes.username = Some("other:bufrag".into());
    let wrong_user = wrong_user
        .to_bytes(Some(&IntegrityKey::short_term(&creds("a").pwd)))
        .unwrap();
    for payload in [
        &bytes[..],
        &wrong_user[..],
        b"not stun at all",
        &[0u8; 20][..],
    ] {
        a.handle_packet(
            now,
            Receive {
                source: from,
                local,
                payload,
            },
        );
    }
    assert!(
        a.poll_transmit(now, &mut buf).is_none(),
        "nothing is answered"
    );
    let stats = a.stats();
    assert_eq!(stats.unauthenticated, 2);
    assert_eq!(stats.malformed, 2);
    // A response to no check of ours.
    let mut response = Message::new(
        Class::SuccessResponse,
        Method::BINDING,
        TransactionId::new([2; 12]),
    );
    response.attributes.xor_mapped_address = Some(from);
    let response = response.to_bytes(None).unwrap();
    a.handle_packet(
        now,
        Receive {
            source: from,
            local,
            payload: &response,
        },
    );
    assert_eq!(a.stats().stray, 1);
    assert!(a.poll_event().is_none());
}

/// On a shared socket an agent takes checks naming its username fragment first, and
/// answers to its own checks; nothing else.
#[test]
fn owns_its_checks_and_answers_only() {
    let mut a = agent(A, B, true, 9);
    let now = Instant::now();
    a.start(now);
    a.handle_timeout(now);
    let mut buf = vec![0u8; 2048];
    let sent = a.poll_transmit(now, &mut buf).unwrap();
    let ours = Message::decode(&buf[..sent.len]).unwrap().transaction_id;
    let local: SocketAddr = A.parse().unwrap();
    let source: SocketAddr = B.parse().unwrap();
    let check = |username: &str| {
        let mut m = Message::new(Class::Request, Method::BINDING, TransactionId::new([3; 12]));
        m.attributes.username = Some(username.into());
        m.to_bytes(None).unwrap()
    };
    let answer = |id| {
        Message::new(Class::SuccessResponse, Method::BINDING, id)
            .to_bytes(None)
            .unwrap()
    };
    let owns = |payload: &[u8]| {
        a.owns(&Receive {
            source,
            local,
            payload,
        })
    };
    assert!(owns(&check("aufrag:bufrag")));
    assert!(
        !owns(&check("aufragx:bufrag")),
        "a longer ufrag with our prefix"
    );
    assert!(!owns(&check("aufrag")), "no colon");
    assert!(!owns(&check("bufrag:aufrag")), "the peer's ufrag first");
    assert!(owns(&answer(ours)));
    assert!(!owns(&answer(TransactionId::new([4; 12]))));
    assert!(!owns(b"\x07application data"));
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut a = agent(A, B, false, 8);
    let now = Instant::now();
    a.start(now);
    let mut state = 0x1234_5678_u64;
    let local: SocketAddr = A.parse().unwrap();
    let mut buf = vec![0u8; 2048];
    for i in 0..20_000u32 {
        state = splitmix(state);
        let len = (state % 120) as usize;
        let mut payload: Vec<u8> = (0..len)
            .map(|j| (splitmix(state ^ j as u64) & 0xff) as u8)
            .collect();
        // Half of them look like STUN so that the decoder, not the cookie check, is tested.
        if i % 2 == 0 && payload.len() >= 20 {
            payload[0] &= 0x01;
            payload[4..8].copy_from_slice(&[0x21, 0x12, 0xa4, 0x42]);
            let body = (payload.len() - 20) as u16;
            payload[2..4].copy_from_slice(&body.to_be_bytes());
        }
        let source = SocketAddr::from(([198, 51, 100, (state >> 56) as u8], 9));
        a.handle_packet(
            now,
            Receive {
                source,
                local,
                payload: &payload,
            },
        );
        a.handle_timeout(now);
        while a.poll_transmit(now, &mut buf).is_some() {}
    }
    let stats = a.stats();
    assert!(stats.malformed + stats.unauthenticated + stats.stray > 10_000);
}

/// A birthday round that finds nothing gives its sockets back when it ends, and the agent
/// sends nothing from them afterwards (the next rounds check the ordinary pairs only).
#[test]
fn a_failed_birthday_round_releases_its_sockets() {
    let cone = Behaviour::Nat {
        mapping: fog_core::nat::Mapping::EndpointIndependent,
        filtering: fog_core::nat::Filtering::AddressAndPortDependent,
        ports: fog_core::nat::PortPattern::Preserved,
        hairpinning: false,
    };
    let symmetric = Behaviour::Nat {
        mapping: fog_core::nat::Mapping::AddressAndPortDependent,
        filtering: fog_core::nat::Filtering::AddressAndPortDependent,
        ports: fog_core::nat::PortPattern::Random,
        hairpinning: false,
    };
    // Whichever side the plan has open the birthday sockets.
    let (who, plan) = [Who::A, Who::B]
        .into_iter()
        .map(|w| (w, Plan::new(cone, symmetric, w, &StrategyConfig::default())))
        .find(|(_, p)| matches!(p.birthday, Some(crate::strategy::Birthday::Open { .. })))
        .expect("one side opens sockets");
    let mut agent = Agent::new(AgentConfig::new(
        creds("a"),
        creds("b"),
        who == Who::A,
        A.parse().unwrap(),
        plan,
        3,
    ));
    let now = Instant::now();
    agent.add_remote(
        now,
        Candidate::new(Kind::ServerReflexive, B.parse().unwrap()),
    );
    agent.start(now);
    agent.handle_timeout(now);
    let opened = agent.birthday_sockets().to_vec();
    assert!(opened.len() > 100, "{} sockets", opened.len());
    assert!(
        agent.take_released().is_empty(),
        "nothing given back while punching"
    );
    // Nothing ever answers: run past the round's end.
    let mut buf = vec![0u8; 2048];
    let mut t = now;
    let end = now + Duration::from_secs(30);
    while t < end {
        while agent.poll_transmit(t, &mut buf).is_some() {}
        t = agent
            .poll_timeout()
            .unwrap_or(end)
            .max(t + Duration::from_millis(1));
        agent.handle_timeout(t);
    }
    let mut released = agent.take_released();
    released.sort();
    let mut expected = opened.clone();
    expected.sort();
    assert_eq!(released, expected, "every socket of the failed round");
    assert!(agent.birthday_sockets().is_empty());
    // Later rounds (on the relay, every 20 s) send from the base only.
    let end = t + Duration::from_secs(60);
    while t < end {
        while let Some(tx) = agent.poll_transmit(t, &mut buf) {
            assert!(
                !opened.contains(&tx.source.unwrap()),
                "sent from a released socket"
            );
        }
        t = agent
            .poll_timeout()
            .unwrap_or(end)
            .max(t + Duration::from_millis(1));
        agent.handle_timeout(t);
    }
}

/// A sealed datagram whose source is not the peer's (a forged or replayed one, from an
/// address nobody answers at) starts a check there but never moves the connection: only
/// the peer can answer the check (RFC 9000 §9.3's path validation). The peer's real address
/// coming back clears it.
#[test]
fn a_source_that_cannot_answer_the_check_does_not_move_the_path() {
    let mut wire = Wire::new(agent(A, B, true, 1), agent(B, A, false, 2));
    wire.start();
    wire.run(Duration::from_secs(1), &mut |_| true);
    let path = (B.parse().unwrap(), A.parse().unwrap());
    assert_eq!(wire.b.selected(), Some(path));
    let selections = wire.selections(false).len();
    let forged: SocketAddr = "192.0.2.66:6666".parse().unwrap();
    let now = wire.now;
    wire.b.heard_from(now, path.0, forged);
    wire.run(Duration::from_secs(10), &mut |_| true);
    assert!(
        wire.sent
            .iter()
            .any(|&(_, from_a, to, _)| !from_a && to == forged),
        "a check went to the new source"
    );
    assert_eq!(wire.b.selected(), Some(path), "the path stays");
    assert_eq!(wire.selections(false).len(), selections);
}

/// A path that stops answering when its owner suspects it moves to a working alternative
/// within a second (three rounds of checks), not after the 30 s consent timeout; a path that
/// answers stays.
#[test]
fn a_suspected_path_that_does_not_answer_is_left_at_once() {
    let (mut wire, _) = dual_wire(Duration::from_millis(2), Duration::from_secs(20));
    assert_eq!(wire.a.selected(), Some((addr(A6), addr(B6))));
    let before = wire.selections(true).len();
    let now = wire.now;
    wire.a.suspect(now);
    wire.run(Duration::from_secs(2), &mut |_| true);
    assert_eq!(wire.selections(true).len(), before, "it answers: it stays");
    // Now the IPv6 path dies silently.
    wire.pass = Box::new(|s, d| !(ipv6(s, d)));
    let now = wire.now;
    wire.a.suspect(now);
    wire.run(Duration::from_secs(1), &mut |_| true);
    let moved = wire.selections(true);
    assert_eq!(moved.len(), before + 1, "{moved:?}");
    assert!(!moved[before].0.is_ipv6(), "{moved:?}");
}

/// Only relays carry the connection (no direct datagram passes), and each side has one: two
/// relay pairs work, one selected and the other its backup. When both die together, the
/// connection is lost one consent timeout (RFC 7675 §5.1: 30 s) after the last answer, as
/// with one path. Selecting a pair used to count as an answer on it, so a silent pair taken
/// (the backup, after the selected one lost consent) got another 30 s, and two relay pairs
/// took turns for a minute and more while the stream above gave up (found by the chaos run,
/// seeds 2530 and 2568 at the time: uTP).
#[test]
fn dead_relay_pairs_are_lost_within_the_consent_timeout() {
    const RA: &str = "198.51.100.60:3478";
    const RB: &str = "198.51.100.61:3478";
    let mut failures = Vec::new();
    for seed in 0..8u64 {
        let mut a = agent(A, B, true, 40 + 2 * seed);
        let mut b = agent(B, A, false, 41 + 2 * seed);
        let now = Instant::now();
        a.set_relayed(now, addr(RA));
        b.set_relayed(now, addr(RB));
        a.add_remote(now, Candidate::new(Kind::Relayed, addr(RB)));
        b.add_remote(now, Candidate::new(Kind::Relayed, addr(RA)));
        let mut wire = Wire::new(a, b);
        let relays = [addr(RA), addr(RB)];
        wire.pass = Box::new(move |s, d| relays.contains(&s) || relays.contains(&d));
        wire.start();
        wire.run(Duration::from_secs(40), &mut |_| true);
        assert!(wire.a.selected_is_relayed() && wire.b.selected_is_relayed());
        // The relays go; what each side heard last is under 5 s old (consent checks, and
        // those of the backup).
        let cut = wire.now;
        wire.pass = Box::new(|_, _| false);
        wire.run(Duration::from_secs(120), &mut |_| true);
        for on_b in [false, true] {
            let lost = wire
                .events
                .iter()
                .find(|(t, b, e)| *t >= cut && *b == on_b && matches!(e, Event::PathLost { .. }))
                .map(|(t, _, _)| *t - cut);
            let moves = wire
                .events
                .iter()
                .filter(|(t, b, e)| *t > cut && *b == on_b && matches!(e, Event::Selected { .. }))
                .count();
            if lost.is_none_or(|l| l > Duration::from_secs(31)) {
                failures.push((seed, on_b, lost, moves));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "(seed, on B, lost after, moves): {failures:?}"
    );
}

/// The netns test's case (fog-cli `a_relayed_connection_moves_to_the_direct_path_when_the_route_opens`):
/// the direct paths are blocked until both sides' first round gave up, then open. The
/// controlling side moves at its next round (REPUNCH_INTERVAL after it gave up), whichever
/// side's round starts first, and the controlled side follows within one path delay of it
/// (its triggered check on the nominated pair, answered; the rounds that gave up do not stop
/// triggered checks): both sides are on the direct path by the time the controlling side's
/// first datagram on it arrives. Low-TTL holds die on the way, as on a real path.
#[test]
fn after_punching_gave_up_the_controlled_side_follows_the_move_to_direct_at_once() {
    let relay: SocketAddr = "198.51.100.50:3478".parse().unwrap();
    let path_delay = Duration::from_millis(20);
    for offset in [0u64, 1, 7, 19, 20, 45, 500] {
        for b_first in [false, true] {
            let mut wire = relay_wire(17);
            wire.low_ttl_dies = true;
            let now = wire.now;
            let (da, db) = if b_first { (offset, 0) } else { (0, offset) };
            wire.a.start(now + Duration::from_millis(da));
            wire.b.start(now + Duration::from_millis(db));
            let cut = std::rc::Rc::new(std::cell::Cell::new(true));
            let c = cut.clone();
            wire.pass = Box::new(move |s, d| !c.get() || s == relay || d == relay);
            wire.run(Duration::from_secs(6), &mut |_| true);
            let gave_up = |b: bool| {
                wire.events
                    .iter()
                    .any(|(_, side, e)| *side == b && *e == Event::GaveUp)
            };
            assert!(gave_up(false) && gave_up(true), "offset {offset}");
            assert!(wire.a.selected_is_relayed() && wire.b.selected_is_relayed());
            cut.set(false);
            wire.run(Duration::from_secs(30), &mut |_| true);
            let direct = |b: bool| {
                wire.events.iter().find_map(|(t, side, e)| match e {
                    Event::Selected { relayed: false, .. } if *side == b => Some(*t),
                    _ => None,
                })
            };
            let (Some(a), Some(b)) = (direct(false), direct(true)) else {
                panic!("offset {offset}, b first {b_first}: {:?}", wire.events);
            };
            // The next round is REPUNCH_INTERVAL after the first gave up (5 s of punching).
            assert!(
                a - now <= Duration::from_secs(5) + REPUNCH_INTERVAL + Duration::from_secs(1),
                "offset {offset}, b first {b_first}: A moved at {:?}",
                a - now
            );
            assert!(
                b <= a + path_delay,
                "offset {offset}, b first {b_first}: A moved at {:?}, B at {:?}",
                a - now,
                b - now
            );
            assert_eq!(wire.a.selected(), wire.b.selected().map(|(l, r)| (r, l)));
        }
    }
}

/// Whether `bytes` is a STUN Binding request (a check), not an answer.
fn is_check(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[..2] == [0x00, 0x01]
}

/// A controlled side on the relay (it suspected its path after the peer's NAT mapped the
/// peer anew) hears the peer's sealed datagrams from the new address; its check there is
/// lost, every retransmission of it (a lossy link). When the datagrams keep coming from that
/// address, the pair is checked again and taken once it answers. It used to be left for
/// good: the side stayed on the relay while the peer was direct (the chaos run's "split"
/// shape, links of 11 % to 20 % loss).
#[test]
fn a_new_source_whose_check_failed_is_checked_again() {
    let (mut wire, relay) = with_b_relayed();
    wire.start();
    wire.run(Duration::from_secs(12), &mut |_| true);
    assert_eq!(wire.b.selected(), Some((addr(B), addr(A))));
    // A's NAT maps A's flow to B anew; A's checks are lost from now on (only its sealed
    // datagrams, handed to B's agent below, tell B where A is), and so are B's until told.
    let moved = addr("192.0.2.1:1001");
    wire.remap = Some((addr(A), addr(B), moved));
    let b_checks_lost = std::rc::Rc::new(std::cell::Cell::new(false));
    let lost = b_checks_lost.clone();
    wire.lose = Box::new(move |from_a, bytes| is_check(bytes) && (from_a || lost.get()));
    for _ in 0..4 {
        let now = wire.now;
        wire.b.suspect(now);
        wire.run(Duration::from_millis(700), &mut |_| true);
    }
    assert_eq!(wire.b.selected(), Some((relay, addr(A))), "B on the relay");
    // A's datagram from the new address: B's check there is lost, all of it.
    b_checks_lost.set(true);
    let now = wire.now;
    wire.b.heard_from(now, addr(B), moved);
    wire.run(Duration::from_secs(6), &mut |_| true);
    assert_eq!(
        wire.b.selected(),
        Some((relay, addr(A))),
        "the check failed"
    );
    // The next datagram from there: checked again, and taken.
    b_checks_lost.set(false);
    let now = wire.now;
    wire.b.heard_from(now, addr(B), moved);
    wire.run(Duration::from_secs(2), &mut |_| true);
    assert_eq!(wire.b.selected(), Some((addr(B), moved)));
}

/// The controlled side's path is lost with nowhere to move to (no relay; the peer's NAT
/// mapped the peer anew and every check of ours went unanswered for the consent timeout),
/// while the controlling side, whose checks from its new address we answer, sees nothing
/// wrong and nominates nothing. Once our checks get through again, the side follows the
/// pair the peer's checks arrive on. It used to stay without a path for good (found by the
/// chaos run, seed 1811: one side direct, the other with nothing after its direct pair and
/// its backup relay pair both lost their consent, on links losing 11 % and 20 %).
#[test]
fn after_the_path_was_lost_the_controlled_side_follows_the_peers_checks() {
    let mut wire = Wire::new(agent(A, B, true, 1), agent(B, A, false, 2));
    wire.start();
    wire.run(Duration::from_secs(3), &mut |_| true);
    assert_eq!(wire.b.selected(), Some((addr(B), addr(A))));
    let moved = addr("192.0.2.1:1001");
    wire.remap = Some((addr(A), addr(B), moved));
    let b_checks_lost = std::rc::Rc::new(std::cell::Cell::new(true));
    let lost = b_checks_lost.clone();
    wire.lose = Box::new(move |from_a, bytes| !from_a && is_check(bytes) && lost.get());
    let cut = wire.now;
    wire.run(Duration::from_secs(40), &mut |_| true);
    assert!(
        wire.events
            .iter()
            .any(|(t, b, e)| *t > cut && *b && matches!(e, Event::PathLost { .. })),
        "B lost its path: {:?}",
        wire.events
    );
    assert_eq!(wire.b.selected(), None);
    b_checks_lost.set(false);
    wire.run(Duration::from_secs(15), &mut |_| true);
    assert_eq!(wire.b.selected(), Some((addr(B), moved)));
    assert_eq!(wire.a.selected(), Some((addr(A), addr(B))), "A never moved");
    assert_eq!(
        wire.selections(false),
        [(addr(A), addr(B))],
        "A saw nothing"
    );
}

/// Only the relay carries the connection (the direct path is cut), and each side in turn
/// loses it for longer than the consent timeout (its checks all lost): `PathLost`, then back
/// on the relay when the peer's checks come through again. When the direct path opens, the
/// rounds of punching find it. They used to stop at the first `PathLost` and never resume,
/// and both sides stayed on the relay for good (found by the chaos run, seed 4197).
#[test]
fn after_the_relay_path_was_lost_and_came_back_punching_resumes() {
    let (mut wire, relay) = with_b_relayed();
    wire.low_ttl_dies = true;
    let cut = std::rc::Rc::new(std::cell::Cell::new(true));
    let c = cut.clone();
    wire.pass = Box::new(move |s, d| !c.get() || s == relay || d == relay);
    // Whose checks are lost: 0 none, 1 A's, 2 B's.
    let silent = std::rc::Rc::new(std::cell::Cell::new(0u8));
    let s = silent.clone();
    wire.lose =
        Box::new(move |from_a, bytes| is_check(bytes) && s.get() == if from_a { 1 } else { 2 });
    wire.start();
    wire.run(Duration::from_secs(8), &mut |_| true);
    assert!(wire.a.selected_is_relayed() && wire.b.selected_is_relayed());
    for (who, on_b) in [(2, true), (1, false)] {
        let from = wire.now;
        silent.set(who);
        wire.run(Duration::from_secs(40), &mut |_| true);
        let lost = wire
            .events
            .iter()
            .any(|(t, b, e)| *t > from && *b == on_b && matches!(e, Event::PathLost { .. }));
        assert!(lost, "side {who} lost its path");
        silent.set(0);
        wire.run(Duration::from_secs(10), &mut |_| true);
        assert!(wire.a.selected_is_relayed() && wire.b.selected_is_relayed());
    }
    cut.set(false);
    wire.run(Duration::from_secs(60), &mut |_| true);
    assert_eq!(wire.a.selected(), Some((addr(A), addr(B))));
    assert_eq!(wire.b.selected(), Some((addr(B), addr(A))));
}
