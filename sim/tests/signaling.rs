//! The signaling channel: frames between nodes and the server machine arrive exactly when the
//! latencies say, in order under jitter, and the ends hear of opens, closes, cuts and an
//! unreachable server.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use fog_signal::KeyPair;
use fog_signal::client::{Client, ClientConfig, Event};
use fog_signal::msg::{Candidate, CandidateKind, Credentials, Description, SessionId};
use fog_signal::server::{Server, ServerConfig};
use fog_sim::link::LinkConfig;
use fog_sim::signal::{
    ClientNode, Closed, ConnId, NodeEvent, Output, SignalLink, SignalNode, SignalServer, State,
};
use fog_sim::{NodeId, Sim};

const REALM: &str = "signal.sim";

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn server() -> Server {
    Server::new(ServerConfig::new(
        KeyPair::from_seed(&[200; 32]),
        REALM,
        [1; 32],
    ))
}

fn client_config(n: u8) -> ClientConfig {
    ClientConfig::new(KeyPair::from_seed(&[n; 32]), REALM, [n; 32])
}

fn host(sim: &mut Sim, name: &str, n: u8) -> NodeId {
    let ip = format!("192.0.2.{n}").parse().unwrap();
    sim.add_host(name, NodeId::INTERNET, &[ip], LinkConfig::default())
}

/// A host running a [`ClientNode`] with key seed `n` behind a signaling link.
fn client_host(sim: &mut Sim, name: &str, n: u8, link: SignalLink) -> NodeId {
    let h = host(sim, name, n);
    let node = ClientNode::new(client_config(n), sim.epoch());
    sim.set_signal_machine(h, 4000, node);
    sim.set_signal_link(h, link);
    h
}

fn description(addr: SocketAddr) -> Description {
    Description {
        candidates: vec![Candidate {
            kind: CandidateKind::Host,
            addr,
            priority: 100,
            related: None,
        }],
        nat: None,
        transports: vec![],
        credentials: Credentials {
            ufrag: "ufrag".into(),
            pwd: "0123456789abcdefghijkl".into(),
        },
        service: 1,
        seal: None,
        quic: None,
        rtc: None,
    }
}

fn peer_id(sim: &Sim, h: NodeId) -> fog_signal::PeerId {
    sim.machine::<ClientNode>(h).client().peer_id()
}

/// The events of `h` as (virtual time, event).
fn events(sim: &mut Sim, h: NodeId) -> Vec<(Duration, NodeEvent)> {
    sim.take_events::<NodeEvent>(h)
        .into_iter()
        .map(|(at, e)| (sim.time_of(at), e))
        .collect()
}

fn is_authenticated(e: &NodeEvent) -> bool {
    matches!(e, NodeEvent::Signal(Event::Authenticated { .. }))
}

/// Connects `hosts` at the current instant and runs until all are authenticated.
fn authenticate(sim: &mut Sim, hosts: &[NodeId]) {
    for &h in hosts {
        sim.signal_connect(h);
    }
    sim.run_for(Duration::from_secs(1));
    for &h in hosts {
        assert!(
            sim.machine::<ClientNode>(h).client().is_authenticated(),
            "{h} did not authenticate"
        );
        sim.take_events::<NodeEvent>(h);
    }
}

#[test]
fn the_answer_arrives_when_the_latencies_say() {
    let mut sim = Sim::new(1);
    sim.set_signal_server(server());
    // Alice: 30 ms and a TCP handshake before the upgrade; bob: 50 ms and no setup round trip.
    let (la, lb) = (30, 50);
    let alice = client_host(
        &mut sim,
        "alice",
        1,
        SignalLink {
            setup_round_trips: 1,
            ..SignalLink::with_latency(ms(la))
        },
    );
    let bob = client_host(&mut sim, "bob", 2, SignalLink::with_latency(ms(lb)));

    sim.signal_connect(alice);
    sim.signal_connect(bob);
    assert!(matches!(sim.signal_state(alice), State::Connecting(_)));
    sim.run_for(Duration::from_secs(1));
    assert!(matches!(sim.signal_state(alice), State::Open(_)));
    // The server accepts after the setup round trips plus one latency, the node is open one
    // latency later; hello → challenge and auth → welcome are two more round trips.
    let a = events(&mut sim, alice);
    assert_eq!(a[0], (ms(3 * la + la), NodeEvent::Opened));
    assert!(is_authenticated(&a[1].1));
    assert_eq!(a[1].0, ms(4 * la + 4 * la));
    let b = events(&mut sim, bob);
    assert_eq!(b[0], (ms(2 * lb), NodeEvent::Opened));
    assert_eq!(b[1].0, ms(6 * lb));
    assert!(is_authenticated(&b[1].1));
    assert_eq!(sim.signal_server::<Server>().peers(), 2);

    // Alice registers an alias; bob looks it up after it is bound.
    let t1 = sim.elapsed();
    let register = sim.with_machine(alice, |n: &mut ClientNode, _| {
        n.client_mut().register("alice").unwrap()
    });
    let lookup = sim.with_machine(bob, |n: &mut ClientNode, _| {
        n.client_mut().lookup("alice").unwrap()
    });
    sim.run_for(Duration::from_secs(1));
    assert_eq!(
        events(&mut sim, alice),
        vec![(
            t1 + ms(2 * la),
            NodeEvent::Signal(Event::Registered {
                request: register,
                alias: "alice".into()
            })
        )]
    );
    let alice_id = peer_id(&sim, alice);
    assert_eq!(
        events(&mut sim, bob),
        vec![(
            t1 + ms(2 * lb),
            NodeEvent::Signal(Event::LookupResult {
                request: lookup,
                peer: Some(alice_id),
                online: true
            })
        )]
    );

    // Bob calls connect; alice answers the moment the offer arrives.
    sim.mark("connect");
    let t2 = sim.elapsed();
    let bob_desc = description("192.0.2.2:4000".parse().unwrap());
    let alice_desc = description("192.0.2.1:4000".parse().unwrap());
    let offer = bob_desc.clone();
    sim.with_machine(bob, |n: &mut ClientNode, _| {
        n.client_mut().connect(alice_id, offer).unwrap()
    });
    let offer_at = sim.epoch() + t2 + ms(lb + la);
    sim.run_until(offer_at);
    let session = match events(&mut sim, alice).as_slice() {
        [
            (
                at,
                NodeEvent::Signal(Event::Offer {
                    session,
                    from,
                    description,
                }),
            ),
        ] => {
            assert_eq!(*at, t2 + ms(lb + la));
            assert_eq!(*from, peer_id(&sim, bob));
            assert_eq!(*description, bob_desc);
            *session
        }
        other => panic!("expected the offer at {:?}: {other:?}", t2 + ms(lb + la)),
    };
    let answer = alice_desc.clone();
    sim.with_machine(alice, |n: &mut ClientNode, _| {
        n.client_mut().answer(session, answer).unwrap()
    });
    sim.run_for(Duration::from_secs(1));

    // Offer up and across, answer up and back: two latencies of each, once each way.
    let b = sim.take_events::<NodeEvent>(bob);
    let answered_at = b
        .iter()
        .find_map(|(at, e)| matches!(e, NodeEvent::Signal(Event::Answer { .. })).then_some(*at))
        .expect("bob got the answer");
    assert_eq!(sim.since_mark("connect", answered_at), ms(2 * (la + lb)));
    // A mark keeps its first instant.
    sim.mark("connect");
    assert_eq!(sim.marked("connect"), Some(sim.epoch() + t2));
    let b: Vec<_> = b.into_iter().map(|(at, e)| (sim.time_of(at), e)).collect();
    assert!(
        matches!(&b[0], (at, NodeEvent::Signal(Event::OfferSent { session: s, .. })) if *at == t2 + ms(2 * lb) && *s == session),
        "{b:?}"
    );
    assert!(
        matches!(&b[1].1, NodeEvent::Signal(Event::Answer { session: s, from, description }) if *s == session && *from == alice_id && *description == alice_desc),
        "{b:?}"
    );
    // Punch sync: the server got the answer at t2 + lb + 2·la and measured RTTs of 2·la and
    // 2·lb during auth; both peers start at that + max RTT / 2 + the 50 ms margin.
    let punch_at = t2 + ms(lb + 2 * la) + ms(lb) + ms(50);
    let punch = |events: &[(Duration, NodeEvent)]| {
        events.iter().find_map(|(_, e)| match e {
            NodeEvent::PunchAt { session: s, at } if *s == session => Some(*at),
            _ => None,
        })
    };
    assert_eq!(punch(&b), Some(punch_at));
    assert_eq!(punch(&events(&mut sim, alice)), Some(punch_at));
    let stats = sim.signal_stats();
    assert_eq!(stats.frames_sent, stats.frames_delivered);
    assert_eq!(stats.frames_lost + stats.frames_discarded, 0);
}

/// What a [`Scripted`] node saw, with virtual times.
#[derive(Debug, Clone, PartialEq)]
enum Seen {
    Opened,
    Frame(String),
    Closed(Closed),
}

/// A node that sends scripted frames (each at an offset after the open) and records all it sees.
struct Scripted {
    epoch: Instant,
    script: Vec<(Duration, String)>,
    due: VecDeque<(Instant, String)>,
    out: VecDeque<String>,
    seen: Vec<(Duration, Seen)>,
}

impl Scripted {
    fn new(epoch: Instant, script: Vec<(Duration, String)>) -> Self {
        Self {
            epoch,
            script,
            due: VecDeque::new(),
            out: VecDeque::new(),
            seen: Vec::new(),
        }
    }

    fn frames(&self) -> Vec<(Duration, String)> {
        self.seen
            .iter()
            .filter_map(|(at, s)| match s {
                Seen::Frame(f) => Some((*at, f.clone())),
                _ => None,
            })
            .collect()
    }
}

impl SansIo for Scripted {
    type Event = ();

    fn accepts(&self, _: &Receive<'_>) -> bool {
        false
    }
    fn handle_packet(&mut self, _: Instant, _: Receive<'_>) {}
    fn handle_timeout(&mut self, now: Instant) {
        while self.due.front().is_some_and(|(at, _)| *at <= now) {
            let (_, frame) = self.due.pop_front().unwrap();
            self.out.push_back(frame);
        }
    }
    fn poll_transmit(&mut self, _: Instant, _: &mut [u8]) -> Option<Transmit> {
        None
    }
    fn poll_event(&mut self) -> Option<()> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.due.front().map(|(at, _)| *at)
    }
}

impl SignalNode for Scripted {
    fn handle_signal_open(&mut self, now: Instant) {
        self.seen.push((now - self.epoch, Seen::Opened));
        self.due = self
            .script
            .iter()
            .map(|(after, f)| (now + *after, f.clone()))
            .collect();
        self.handle_timeout(now);
    }
    fn handle_signal_frame(&mut self, now: Instant, frame: &str) {
        self.seen
            .push((now - self.epoch, Seen::Frame(frame.into())));
    }
    fn handle_signal_closed(&mut self, now: Instant, why: Closed) {
        self.seen.push((now - self.epoch, Seen::Closed(why)));
    }
    fn poll_signal_frame(&mut self) -> Option<String> {
        self.out.pop_front()
    }
}

/// A server that echoes every frame and logs what it sees, with virtual times.
struct Echo {
    epoch: Instant,
    log: Vec<(Duration, ConnId, String)>,
    out: VecDeque<Output>,
}

impl Echo {
    fn new(epoch: Instant) -> Self {
        Self {
            epoch,
            log: Vec::new(),
            out: VecDeque::new(),
        }
    }
}

impl SignalServer for Echo {
    fn handle_connect(&mut self, now: Instant, conn: ConnId) {
        self.log.push((now - self.epoch, conn, "connect".into()));
    }
    fn handle_frame(&mut self, now: Instant, conn: ConnId, frame: &str) {
        self.log.push((now - self.epoch, conn, frame.into()));
        self.out.push_back(Output::Send {
            conn,
            frame: frame.into(),
        });
    }
    fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        self.log.push((now - self.epoch, conn, "disconnect".into()));
    }
    fn handle_timeout(&mut self, _: Instant) {}
    fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

#[test]
fn jitter_delays_but_never_reorders() {
    let mut sim = Sim::new(7);
    sim.set_signal_server(Echo::new(sim.epoch()));
    let h = host(&mut sim, "alice", 1);
    // Bursts of ten frames every 2 ms, much denser than the 25 ms of jitter.
    let script = (0..300u64)
        .map(|i| (ms(i / 10 * 2), format!("{i}")))
        .collect();
    sim.set_signal_machine(h, 4000, Scripted::new(sim.epoch(), script));
    let latency = ms(20);
    sim.set_signal_link(
        h,
        SignalLink {
            jitter: ms(25),
            ..SignalLink::with_latency(latency)
        },
    );
    sim.signal_connect(h);
    sim.run_for(Duration::from_secs(2));

    let expected: Vec<String> = (0..300).map(|i| i.to_string()).collect();
    let server_log = &sim.signal_server::<Echo>().log;
    let at_server: Vec<String> = server_log[1..].iter().map(|(_, _, f)| f.clone()).collect();
    assert_eq!(
        at_server, expected,
        "the server saw the frames out of order"
    );
    let node = sim.machine::<Scripted>(h);
    let opened = node.seen[0].0;
    let echoed = node.frames();
    let frames: Vec<String> = echoed.iter().map(|(_, f)| f.clone()).collect();
    assert_eq!(frames, expected, "the node saw the echoes out of order");
    let mut round_trips = Vec::new();
    for (i, (at, _)) in echoed.iter().enumerate() {
        let sent = opened + ms(i as u64 / 10 * 2);
        let rtt = *at - sent;
        assert!(rtt >= 2 * latency, "frame {i} beat the latency: {rtt:?}");
        assert!(rtt <= 2 * (latency + ms(25)) + ms(60), "frame {i}: {rtt:?}");
        round_trips.push(rtt);
    }
    assert!(
        echoed.windows(2).all(|w| w[0].0 <= w[1].0),
        "arrivals go back in time"
    );
    // The jitter was applied: round trips differ, and some are well above the bare latency.
    round_trips.sort();
    assert!(round_trips[round_trips.len() - 1] > 2 * latency + ms(20));
    assert!(round_trips.windows(2).any(|w| w[0] != w[1]));
}

#[test]
fn bandwidth_queues_frames_behind_each_other() {
    let mut sim = Sim::new(1);
    sim.set_signal_server(Echo::new(sim.epoch()));
    let h = host(&mut sim, "alice", 1);
    // Four 1,000-byte frames at once over 80 kbit/s: 100 ms of wire each.
    let frame = "x".repeat(1_000);
    let script = (0..4).map(|_| (Duration::ZERO, frame.clone())).collect();
    sim.set_signal_machine(h, 4000, Scripted::new(sim.epoch(), script));
    sim.set_signal_link(
        h,
        SignalLink {
            bandwidth_bps: Some(80_000),
            ..SignalLink::with_latency(ms(10))
        },
    );
    sim.signal_connect(h);
    sim.run_for(Duration::from_secs(2));
    // Open at 20 ms; frame k reaches the server at 20 + 100·(k+1) + 10 ms, and the echoes leave
    // it as fast as they come, so each one is on the down wire alone.
    let at_server: Vec<Duration> = sim.signal_server::<Echo>().log[1..]
        .iter()
        .map(|(at, _, _)| *at)
        .collect();
    assert_eq!(at_server, vec![ms(130), ms(230), ms(330), ms(430)]);
    let at_node: Vec<Duration> = sim
        .machine::<Scripted>(h)
        .frames()
        .iter()
        .map(|(at, _)| *at)
        .collect();
    assert_eq!(at_node, vec![ms(240), ms(340), ms(440), ms(540)]);
}

#[test]
fn a_cut_is_reported_to_both_ends_and_the_node_reconnects() {
    let mut sim = Sim::new(3);
    sim.set_signal_server(server());
    let (la, lb) = (30, 50);
    let alice = client_host(&mut sim, "alice", 1, SignalLink::with_latency(ms(la)));
    let bob = client_host(&mut sim, "bob", 2, SignalLink::with_latency(ms(lb)));
    authenticate(&mut sim, &[alice, bob]);
    let alice_id = peer_id(&sim, alice);

    // Bob offers, alice answers: a session is open.
    let offer = description("192.0.2.2:4000".parse().unwrap());
    sim.with_machine(bob, |n: &mut ClientNode, _| {
        n.client_mut().connect(alice_id, offer).unwrap()
    });
    sim.run_for(ms(200));
    let session = events(&mut sim, alice)
        .into_iter()
        .find_map(|(_, e)| match e {
            NodeEvent::Signal(Event::Offer { session, .. }) => Some(session),
            _ => None,
        })
        .expect("an offer");
    let answer = description("192.0.2.1:4000".parse().unwrap());
    sim.with_machine(alice, |n: &mut ClientNode, _| {
        n.client_mut().answer(session, answer).unwrap()
    });
    sim.run_for(ms(500));
    sim.take_events::<NodeEvent>(bob);
    sim.take_events::<NodeEvent>(alice);

    // Alice pings and is cut 10 ms later: the ping is lost on the wire.
    let Some(State::Open(old_conn)) = Some(sim.signal_state(alice)) else {
        panic!("alice is not connected");
    };
    sim.with_machine(alice, |n: &mut ClientNode, now| {
        n.client_mut().ping(now).unwrap()
    });
    sim.run_for(ms(10));
    let cut = sim.elapsed();
    sim.signal_sever(alice);
    assert_eq!(sim.signal_state(alice), State::Idle);
    assert_eq!(sim.signal_stats().frames_lost, 1);
    assert_eq!(
        events(&mut sim, alice),
        vec![(cut, NodeEvent::Closed(Closed::Severed))]
    );
    // The server learns one latency later.
    assert!(sim.signal_server::<Server>().is_online(&alice_id));
    sim.run_until(sim.epoch() + cut + ms(la) - Duration::from_nanos(1));
    assert!(sim.signal_server::<Server>().is_online(&alice_id));
    sim.run_until(sim.epoch() + cut + ms(la));
    assert!(!sim.signal_server::<Server>().is_online(&alice_id));
    assert_eq!(sim.signal_server::<Server>().connections(), 1);
    assert_eq!(
        sim.signal_connections(),
        1,
        "alice's cut connection is forgotten"
    );
    // The answered session waits for alice to come back (the server's rejoin grace, 10 s),
    // then closes.
    sim.run_for(ms(200));
    assert!(events(&mut sim, bob).is_empty(), "closed before the grace");
    let grace = Duration::from_secs(10);
    sim.run_until(sim.epoch() + cut + ms(la + lb) + grace);
    assert_eq!(
        events(&mut sim, bob),
        vec![(
            cut + ms(la + lb) + grace,
            NodeEvent::Signal(Event::SessionClosed {
                session,
                reason: "peer left".into(),
                code: None,
            })
        )]
    );
    // Nothing reached alice after the cut.
    assert!(events(&mut sim, alice).is_empty());

    // Alice's machine asks to reconnect: a new connection, authenticated three round trips later.
    let again = sim.elapsed();
    sim.with_machine(alice, |n: &mut ClientNode, _| {
        n.request(fog_sim::signal::Request::Connect)
    });
    let State::Connecting(new_conn) = sim.signal_state(alice) else {
        panic!("not connecting: {}", sim.signal_state(alice));
    };
    assert_ne!(new_conn, old_conn);
    sim.run_for(Duration::from_secs(1));
    let a = events(&mut sim, alice);
    assert_eq!(a[0], (again + ms(2 * la), NodeEvent::Opened));
    assert_eq!(a[1].0, again + ms(6 * la));
    assert!(is_authenticated(&a[1].1));
    assert!(sim.signal_server::<Server>().is_online(&alice_id));
    assert_eq!(sim.signal_server::<Server>().connections(), 2);
}

#[test]
fn a_graceful_close_follows_the_frames_sent_before_it() {
    let mut sim = Sim::new(4);
    sim.set_signal_server(Echo::new(sim.epoch()));
    let h = host(&mut sim, "alice", 1);
    let script = vec![(Duration::ZERO, "last words".to_string())];
    sim.set_signal_machine(h, 4000, Scripted::new(sim.epoch(), script));
    sim.set_signal_link(h, SignalLink::with_latency(ms(15)));
    sim.signal_connect(h);
    sim.run_for(ms(30));
    // The frame left at 30 ms, the close right behind it.
    sim.signal_close(h);
    sim.run_for(Duration::from_secs(1));
    let log = &sim.signal_server::<Echo>().log;
    let log: Vec<(Duration, &str)> = log.iter().map(|(at, _, f)| (*at, f.as_str())).collect();
    assert_eq!(
        log,
        vec![
            (ms(15), "connect"),
            (ms(45), "last words"),
            (ms(45), "disconnect")
        ]
    );
    let node = sim.machine::<Scripted>(h);
    assert_eq!(
        node.seen,
        vec![
            (ms(30), Seen::Opened),
            (ms(30), Seen::Closed(Closed::Local))
        ]
    );
    // The echo found the node's end closed; then nothing is left of the connection.
    assert_eq!(sim.signal_stats().frames_discarded, 1);
    assert_eq!(sim.signal_connections(), 0);
}

#[test]
fn a_server_close_arrives_after_the_frames_before_it() {
    let mut sim = Sim::new(5);
    sim.set_signal_server(server());
    let h = host(&mut sim, "mute", 1);
    // Never says hello: the server's auth timeout (10 s) closes the connection.
    sim.set_signal_machine(h, 4000, Scripted::new(sim.epoch(), vec![]));
    sim.set_signal_link(h, SignalLink::with_latency(ms(40)));
    sim.signal_connect(h);
    sim.run_for(Duration::from_secs(11));
    let seen = &sim.machine::<Scripted>(h).seen;
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert_eq!(seen[0], (ms(80), Seen::Opened));
    let closed_at = ms(40) + Duration::from_secs(10) + ms(40);
    assert!(
        matches!(&seen[1], (at, Seen::Frame(f)) if *at == closed_at && f.contains("auth_timeout")),
        "{seen:?}"
    );
    assert_eq!(
        seen[2],
        (
            closed_at,
            Seen::Closed(Closed::Server {
                code: 1008,
                reason: "auth_timeout".into()
            })
        )
    );
    assert_eq!(sim.signal_state(h), State::Idle);
    assert_eq!(sim.signal_server::<Server>().connections(), 0);
    assert_eq!(sim.signal_connections(), 0);
}

#[test]
fn a_blocked_server_is_unreachable() {
    let mut sim = Sim::new(6);
    sim.set_signal_server(server());
    let alice = client_host(
        &mut sim,
        "alice",
        1,
        SignalLink {
            connect_timeout: Duration::from_secs(5),
            ..SignalLink::with_latency(ms(20))
        },
    );
    sim.set_signal_blocked(alice, true);
    sim.signal_connect(alice);
    sim.run_for(Duration::from_secs(6));
    assert_eq!(
        events(&mut sim, alice),
        vec![(
            Duration::from_secs(5),
            NodeEvent::Closed(Closed::Unreachable)
        )]
    );
    assert_eq!(sim.signal_server::<Server>().connections(), 0);
    assert_eq!(sim.signal_connections(), 0);

    // Reachable again: the next connect works.
    sim.set_signal_blocked(alice, false);
    authenticate(&mut sim, &[alice]);
    assert_eq!(sim.signal_server::<Server>().peers(), 1);

    // Blocking an open connection cuts it.
    let at = sim.elapsed();
    sim.set_signal_blocked(alice, true);
    sim.run_for(ms(100));
    assert_eq!(
        events(&mut sim, alice),
        vec![(at, NodeEvent::Closed(Closed::Severed))]
    );
    assert_eq!(sim.signal_server::<Server>().connections(), 0);
    assert_eq!(sim.signal_connections(), 0);
}

/// A node that signals and sends datagrams: it offers its own address, and once the answer
/// names the peer's, it sends a datagram there; it answers every datagram it gets once.
struct Peer {
    client: Client,
    me: SocketAddr,
    events: VecDeque<PeerEvent>,
    outbox: VecDeque<(SocketAddr, Vec<u8>)>,
}

#[derive(Debug, PartialEq)]
enum PeerEvent {
    Authenticated,
    Offered(SessionId),
    Answered(SocketAddr),
    Datagram { from: SocketAddr, payload: Vec<u8> },
}

impl Peer {
    fn new(n: u8, me: SocketAddr) -> Self {
        Self {
            client: Client::new(client_config(n)),
            me,
            events: VecDeque::new(),
            outbox: VecDeque::new(),
        }
    }

    fn pump(&mut self) {
        while let Some(e) = self.client.poll_event() {
            match e {
                Event::Authenticated { .. } => self.events.push_back(PeerEvent::Authenticated),
                Event::Offer { session, .. } => {
                    // Answer at once with our own address.
                    self.client.answer(session, description(self.me)).unwrap();
                    self.events.push_back(PeerEvent::Offered(session));
                }
                Event::Answer { description, .. } => {
                    let there = description.candidates[0].addr;
                    self.outbox.push_back((there, b"hello".to_vec()));
                    self.events.push_back(PeerEvent::Answered(there));
                }
                _ => {}
            }
        }
    }
}

impl SansIo for Peer {
    type Event = PeerEvent;

    fn handle_packet(&mut self, _: Instant, packet: Receive<'_>) {
        if packet.payload == b"hello" {
            self.outbox
                .push_back((packet.source, b"hello back".to_vec()));
        }
        self.events.push_back(PeerEvent::Datagram {
            from: packet.source,
            payload: packet.payload.to_vec(),
        });
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.client.handle_timeout(now);
        self.pump();
    }
    fn poll_transmit(&mut self, _: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (to, payload) = self.outbox.pop_front()?;
        buf[..payload.len()].copy_from_slice(&payload);
        Some(Transmit::new(to, payload.len()))
    }
    fn poll_event(&mut self) -> Option<PeerEvent> {
        self.events.pop_front()
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.client.poll_timeout()
    }
}

impl SignalNode for Peer {
    fn handle_signal_open(&mut self, now: Instant) {
        self.client.handle_connected(now);
        self.pump();
    }
    fn handle_signal_frame(&mut self, now: Instant, frame: &str) {
        self.client.handle_frame(now, frame);
        self.pump();
    }
    fn handle_signal_closed(&mut self, _: Instant, _: Closed) {}
    fn poll_signal_frame(&mut self) -> Option<String> {
        self.client.poll_frame()
    }
}

#[test]
fn one_node_sends_datagrams_and_signals() {
    let mut sim = Sim::new(8);
    sim.set_signal_server(server());
    let a_addr: SocketAddr = "192.0.2.1:4000".parse().unwrap();
    let b_addr: SocketAddr = "192.0.2.2:4000".parse().unwrap();
    // Datagrams: 10 ms per access link, 20 ms host to host. Signaling: 30 ms and 50 ms.
    let udp = LinkConfig::with_latency(ms(10));
    let a = sim.add_host("alice", NodeId::INTERNET, &[a_addr.ip()], udp.clone());
    let b = sim.add_host("bob", NodeId::INTERNET, &[b_addr.ip()], udp);
    sim.set_signal_machine(a, 4000, Peer::new(1, a_addr));
    sim.set_signal_machine(b, 4000, Peer::new(2, b_addr));
    sim.set_signal_link(a, SignalLink::with_latency(ms(30)));
    sim.set_signal_link(b, SignalLink::with_latency(ms(50)));
    sim.signal_connect(a);
    sim.signal_connect(b);
    sim.run_for(Duration::from_secs(1));
    let a_id = sim.machine::<Peer>(a).client.peer_id();
    assert_eq!(sim.take_events::<PeerEvent>(a).len(), 1);
    assert_eq!(sim.take_events::<PeerEvent>(b).len(), 1);

    sim.mark("connect");
    sim.with_machine(b, |p: &mut Peer, _| {
        p.client.connect(a_id, description(b_addr)).unwrap()
    });
    sim.run_for(Duration::from_secs(1));
    let since = |sim: &Sim, events: Vec<(Instant, PeerEvent)>| -> Vec<(Duration, PeerEvent)> {
        events
            .into_iter()
            .map(|(at, e)| (sim.since_mark("connect", at), e))
            .collect()
    };
    let (events_a, events_b) = (sim.take_events(a), sim.take_events(b));
    let at_a = since(&sim, events_a);
    let at_b = since(&sim, events_b);
    // The answer reaches bob after 2 × (30 + 50) ms; his datagram takes 20 ms to alice and her
    // reply 20 ms back. Signaling and datagrams ran on one clock.
    assert!(matches!(at_a[0], (t, PeerEvent::Offered(_)) if t == ms(80)));
    assert_eq!(
        at_a[1],
        (
            ms(180),
            PeerEvent::Datagram {
                from: b_addr,
                payload: b"hello".to_vec()
            }
        )
    );
    assert_eq!(at_b[0], (ms(160), PeerEvent::Answered(a_addr)));
    assert_eq!(
        at_b[1],
        (
            ms(200),
            PeerEvent::Datagram {
                from: a_addr,
                payload: b"hello back".to_vec()
            }
        )
    );
    assert_eq!(sim.stats().delivered, 2);
    // Signaling frames are not datagrams.
    assert_eq!(sim.stats().sent, 2);
}

#[test]
fn same_seed_same_signaling_trace() {
    fn run(seed: u64) -> Vec<u8> {
        let mut sim = Sim::new(seed);
        sim.enable_trace();
        sim.set_signal_server(server());
        let link = |latency| SignalLink {
            jitter: ms(15),
            bandwidth_bps: Some(200_000),
            setup_round_trips: 1,
            ..SignalLink::with_latency(ms(latency))
        };
        let alice = client_host(&mut sim, "alice", 1, link(20));
        let bob = client_host(&mut sim, "bob", 2, link(35));
        authenticate(&mut sim, &[alice, bob]);
        let alice_id = peer_id(&sim, alice);
        for _ in 0..5 {
            sim.with_machine(bob, |n: &mut ClientNode, now| {
                n.client_mut().ping(now).unwrap();
                n.client_mut()
                    .connect(alice_id, description("192.0.2.2:4000".parse().unwrap()))
                    .unwrap();
            });
            sim.run_for(ms(30));
        }
        sim.run_for(Duration::from_secs(1));
        sim.signal_sever(bob);
        sim.signal_connect(bob);
        sim.run_for(Duration::from_secs(1));
        sim.trace().to_vec()
    }
    let one = run(11);
    assert!(one == run(11), "same seed, different trace");
    assert!(one != run(12), "the jitter did not depend on the seed");
    let text = String::from_utf8(one).unwrap();
    for word in [
        "connect",
        "accept",
        "to-server",
        "to-node",
        "sever",
        "Offer",
    ] {
        assert!(text.contains(word), "no {word:?} in the trace");
    }
}

#[test]
fn a_break_is_told_to_the_server_only_and_loses_what_the_node_sends() {
    let mut sim = Sim::new(4);
    sim.set_signal_server(server());
    let la = 30;
    let alice = client_host(&mut sim, "alice", 1, SignalLink::with_latency(ms(la)));
    authenticate(&mut sim, &[alice]);
    let alice_id = peer_id(&sim, alice);
    events(&mut sim, alice);
    let State::Open(conn) = sim.signal_state(alice) else {
        panic!("alice is not connected");
    };
    let cut = sim.elapsed();
    sim.signal_break(alice);
    // The node's end stays open and hears nothing; the server learns one latency later.
    assert_eq!(sim.signal_state(alice), State::Open(conn));
    sim.run_until(sim.epoch() + cut + ms(la));
    assert!(!sim.signal_server::<Server>().is_online(&alice_id));
    // What alice sends now is lost, and no answer comes.
    sim.with_machine(alice, |n: &mut ClientNode, now| {
        n.client_mut().ping(now).unwrap()
    });
    sim.run_for(ms(500));
    assert_eq!(sim.signal_stats().frames_lost, 1);
    assert!(events(&mut sim, alice).is_empty());
    assert_eq!(sim.signal_state(alice), State::Open(conn));
    // Until alice closes it herself; then a new connection works.
    sim.signal_close(alice);
    assert_eq!(sim.signal_state(alice), State::Idle);
    assert_eq!(sim.signal_connections(), 0);
    sim.signal_connect(alice);
    sim.run_for(ms(1_000));
    assert!(
        events(&mut sim, alice)
            .iter()
            .any(|(_, e)| is_authenticated(e))
    );
    assert!(sim.signal_server::<Server>().is_online(&alice_id));
}
