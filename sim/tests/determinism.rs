//! The same seed gives the same run, byte for byte in the trace; another seed another run.
//!
//! The scenario draws randomness everywhere the simulator does: jitter, random and bursty loss,
//! reordering, duplication, a bandwidth queue, NATs with random ports, machines seeded with
//! [`Sim::fork_seed`]. Hosts behind NATs and on the open internet, over IPv4 and IPv6, exchange
//! requests and replies in both directions for several seconds of virtual time. Meanwhile two
//! signaling clients reach a signaling server over channels with jitter and a bandwidth limit,
//! exchange an offer and an answer, and one of them is cut off and reconnects.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use fog_signal::KeyPair;
use fog_signal::client::{ClientConfig, Event};
use fog_signal::msg::{Credentials, Description};
use fog_signal::server::{Server, ServerConfig};
use fog_sim::link::{BurstLoss, LinkConfig, LinkDrop};
use fog_sim::presets::Preset;
use fog_sim::signal::{ClientNode, NodeEvent, Request, SignalLink};
use fog_sim::{Drop, NodeId, Sim, Stats};

/// SplitMix64: a machine's own seeded generator, so that the test needs no RNG crate.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What a [`Chatter`] reports for each datagram it gets. No `Instant` in it: its `Debug` goes into
/// the trace, and an absolute instant would differ from run to run.
#[derive(Debug)]
#[allow(dead_code)] // read through `Debug` only
struct Got {
    from: SocketAddr,
    local_port: u16,
    reply: bool,
    len: usize,
}

/// Every `period` (± a random part) sends a request to each peer from a random one of its ports,
/// with a random length; answers every request with a reply to where it came from.
struct Chatter {
    rng: SplitMix,
    peers: Vec<SocketAddr>,
    ports: Vec<u16>,
    period: Duration,
    next: Option<Instant>,
    stop: Instant,
    counter: u32,
    outbox: VecDeque<(SocketAddr, SocketAddr, Vec<u8>)>,
    events: VecDeque<Got>,
}

impl Chatter {
    fn new(
        seed: u64,
        now: Instant,
        peers: Vec<SocketAddr>,
        ports: Vec<u16>,
        run: Duration,
    ) -> Self {
        let mut rng = SplitMix(seed);
        let period = Duration::from_millis(8 + rng.below(8));
        let first = now + Duration::from_micros(rng.below(10_000));
        Self {
            rng,
            peers,
            ports,
            period,
            next: Some(first),
            stop: now + run,
            counter: 0,
            outbox: VecDeque::new(),
            events: VecDeque::new(),
        }
    }
}

impl SansIo for Chatter {
    type Event = Got;

    fn handle_packet(&mut self, _now: Instant, packet: Receive<'_>) {
        let reply = packet.payload.first() == Some(&b'R');
        if !reply {
            let mut answer = packet.payload.to_vec();
            answer[0] = b'R';
            self.outbox.push_back((packet.local, packet.source, answer));
        }
        self.events.push_back(Got {
            from: packet.source,
            local_port: packet.local.port(),
            reply,
            len: packet.payload.len(),
        });
    }

    fn handle_timeout(&mut self, now: Instant) {
        let Some(next) = self.next else { return };
        if now < next {
            return;
        }
        for i in 0..self.peers.len() {
            let peer = self.peers[i];
            let port = self.ports[self.rng.below(self.ports.len() as u64) as usize];
            let unspecified: IpAddr = if peer.is_ipv4() {
                "0.0.0.0".parse().unwrap()
            } else {
                "::".parse().unwrap()
            };
            // Mostly small, now and then too big for a 1,500-byte MTU.
            let len = if self.rng.below(200) == 0 {
                1_480
            } else {
                5 + self.rng.below(1_000) as usize
            };
            let mut payload = vec![0; len];
            payload[0] = b'Q';
            payload[1..5].copy_from_slice(&self.counter.to_be_bytes());
            self.counter += 1;
            self.outbox
                .push_back((SocketAddr::new(unspecified, port), peer, payload));
        }
        let next = now + self.period + Duration::from_micros(self.rng.below(3_000));
        self.next = (next < self.stop).then_some(next);
    }

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (source, destination, payload) = self.outbox.pop_front()?;
        buf[..payload.len()].copy_from_slice(&payload);
        Some(Transmit::new(destination, payload.len()).from_source(source))
    }

    fn poll_event(&mut self) -> Option<Got> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Virtual time the machines keep sending for.
const RUN: Duration = Duration::from_secs(4);

/// Builds and runs the scenario; returns the trace and the final counters.
fn run(seed: u64) -> (Vec<u8>, Stats) {
    let mut sim = Sim::new(seed);
    sim.enable_trace();

    // Duplication only on links without jitter: see the ignored test in `links.rs`.
    let server_link = LinkConfig {
        jitter: Duration::from_millis(4),
        loss: 0.02,
        reorder: 0.03,
        reorder_delay: Duration::from_millis(6),
        ..LinkConfig::with_latency(Duration::from_millis(12))
    };
    let alice_link = LinkConfig {
        loss: 0.01,
        burst: Some(BurstLoss {
            enter_bad: 0.01,
            leave_bad: 0.25,
            loss_in_bad: 0.8,
        }),
        reorder: 0.05,
        reorder_delay: Duration::from_millis(8),
        duplicate: 0.03,
        ..LinkConfig::with_latency(Duration::from_millis(20))
    };
    let bob_link = LinkConfig {
        jitter: Duration::from_millis(2),
        loss: 0.03,
        bandwidth_bps: Some(200_000),
        queue_limit_bytes: 3_000,
        ..LinkConfig::with_latency(Duration::from_millis(30))
    };
    let carol_link = LinkConfig {
        duplicate: 0.05,
        burst: Some(BurstLoss {
            enter_bad: 0.02,
            leave_bad: 0.3,
            loss_in_bad: 1.0,
        }),
        ..LinkConfig::with_latency(Duration::from_millis(7))
    };
    let dave_link = LinkConfig {
        jitter: Duration::from_millis(10),
        reorder: 0.1,
        reorder_delay: Duration::from_millis(15),
        ..LinkConfig::with_latency(Duration::from_millis(40))
    };

    let server = sim.add_host(
        "server",
        NodeId::INTERNET,
        &[ip("198.51.100.1"), ip("2001:db8::1")],
        server_link,
    );
    let carol = sim.add_host(
        "carol",
        NodeId::INTERNET,
        &[ip("198.51.100.7"), ip("2001:db8::7")],
        carol_link,
    );
    let dave = sim.add_host("dave", NodeId::INTERNET, &[ip("2001:db8::d")], dave_link);
    // Random external ports, the first one address-and-port-dependent.
    let alice = Preset::SymmetricRandom.attach(&mut sim, "alice", 1, alice_link);
    let bob = Preset::CgnatBehindHome.attach(&mut sim, "bob", 2, bob_link);

    let now = sim.now();
    let ports = |base: u16| (0..4).map(|i| base + i).collect::<Vec<_>>();
    let machines = [
        (
            server,
            vec![sa("198.51.100.7:4000"), sa("[2001:db8::d]:4000")],
        ),
        (
            carol,
            vec![
                sa("198.51.100.1:4000"),
                sa("[2001:db8::d]:4000"),
                // Unsolicited, at a port alice's NAT may or may not have mapped.
                sa("203.0.113.1:4000"),
            ],
        ),
        (
            dave,
            vec![
                sa("[2001:db8::1]:4000"),
                sa("[2001:db8::7]:4000"),
                sa("198.51.100.1:4000"),
            ],
        ),
        (
            alice.host,
            vec![sa("198.51.100.1:4000"), sa("198.51.100.7:4000")],
        ),
        (
            bob.host,
            vec![sa("198.51.100.1:4000"), sa("198.51.100.7:4002")],
        ),
    ];
    for (host, peers) in machines {
        let seed = sim.fork_seed();
        sim.set_machine(host, 4000, Chatter::new(seed, now, peers, ports(4000), RUN));
    }

    // Signaling: machines keyed and seeded from the simulator, jittery channels.
    let realm = "determinism";
    let mut seed32 = || {
        let mut out = [0u8; 32];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&sim.fork_seed().to_le_bytes());
        }
        out
    };
    let (server_key, server_seed) = (seed32(), seed32());
    let mut clients = Vec::new();
    for _ in 0..2 {
        clients.push(ClientConfig::new(
            KeyPair::from_seed(&seed32()),
            realm,
            seed32(),
        ));
    }
    sim.set_signal_server(Server::new(ServerConfig::new(
        KeyPair::from_seed(&server_key),
        realm,
        server_seed,
    )));
    let mut signalers = Vec::new();
    for ((name, last), config) in [("erin", 8u8), ("frank", 9)].into_iter().zip(clients) {
        let h = sim.add_host(
            name,
            NodeId::INTERNET,
            &[ip(&format!("198.51.100.{last}"))],
            LinkConfig::default(),
        );
        let node = ClientNode::new(config, sim.epoch());
        sim.set_signal_machine(h, 4000, node);
        sim.set_signal_link(
            h,
            SignalLink {
                jitter: Duration::from_millis(20),
                bandwidth_bps: Some(100_000),
                setup_round_trips: 1,
                ..SignalLink::with_latency(Duration::from_millis(20 + 5 * u64::from(last)))
            },
        );
        sim.signal_connect(h);
        signalers.push(h);
    }
    let [erin, frank] = signalers[..] else {
        unreachable!()
    };

    sim.run_for(Duration::from_secs(1));
    let erin_id = sim.machine::<ClientNode>(erin).client().peer_id();
    let offer = description(1);
    sim.with_machine(frank, |n: &mut ClientNode, now| {
        n.client_mut().ping(now).unwrap();
        n.client_mut().connect(erin_id, offer).unwrap();
    });
    sim.run_for(Duration::from_millis(500));
    let session = sim
        .take_events::<NodeEvent>(erin)
        .into_iter()
        .find_map(|(_, e)| match e {
            NodeEvent::Signal(Event::Offer { session, .. }) => Some(session),
            _ => None,
        })
        .expect("erin got the offer");
    sim.with_machine(erin, |n: &mut ClientNode, _| {
        n.client_mut().answer(session, description(2)).unwrap()
    });
    sim.run_for(Duration::from_millis(500));
    sim.signal_sever(frank);
    sim.run_for(Duration::from_millis(500));
    sim.with_machine(frank, |n: &mut ClientNode, _| n.request(Request::Connect));

    sim.run_until(sim.epoch() + RUN + Duration::from_secs(2));
    assert_eq!(sim.stats().in_flight(), 0, "the network went quiet");
    assert!(
        sim.machine::<ClientNode>(frank).client().is_authenticated(),
        "frank reconnected"
    );
    (sim.trace().to_vec(), sim.stats().clone())
}

fn description(n: u8) -> Description {
    Description {
        candidates: vec![],
        nat: None,
        transports: vec![],
        credentials: Credentials {
            ufrag: format!("uf{n:02}"),
            pwd: "0123456789abcdefghijkl".into(),
        },
        service: 1,
        seal: None,
        quic: None,
        rtc: None,
    }
}

fn summary(trace: &[u8]) -> String {
    let text = std::str::from_utf8(trace).expect("the trace is text");
    format!("{} lines, {} bytes", text.lines().count(), trace.len())
}

#[test]
fn same_seed_same_trace_and_the_trace_is_rich() {
    let (trace, stats) = run(1);
    let (again, stats_again) = run(1);
    assert!(trace == again, "same seed, different trace");
    assert_eq!(stats, stats_again);

    let text = std::str::from_utf8(&trace).expect("the trace is text");
    let lines = text.lines().count();
    assert!(lines > 1_000, "{}", summary(&trace));
    for word in [
        "send ",
        "deliver ",
        "drop ",
        "timer ",
        "event ",
        "signal ",
        "to-server",
        "to-node",
        "sever",
        "PunchAt",
    ] {
        assert!(text.contains(word), "no {word:?} in the trace");
    }
    // Each source of randomness was exercised.
    assert!(stats.duplicated > 0);
    for reason in [
        Drop::Link(LinkDrop::Lost),
        Drop::Link(LinkDrop::TooBig),
        Drop::Link(LinkDrop::QueueFull),
        Drop::NoAddressForFamily,
    ] {
        assert!(stats.dropped(reason) > 0, "no {reason:?} drop: {stats:?}");
    }
    assert!(
        stats.drops.keys().any(|r| matches!(r, Drop::Nat(_))),
        "no NAT drop: {stats:?}"
    );
    assert!(stats.delivered > 1_000, "{stats:?}");
}

#[test]
fn another_seed_another_trace() {
    let (one, one_stats) = run(1);
    let (two, two_stats) = run(2);
    assert!(one != two, "seeds 1 and 2 gave the same trace");
    assert_ne!(one_stats, two_stats);
}

#[test]
fn concurrent_runs_agree() {
    // Two runs in parallel threads and one here: any global state (a shared counter, an RNG not
    // drawn from the seed, the wall clock leaking into the output) would set them apart.
    let threads: Vec<_> = (0..2).map(|_| std::thread::spawn(|| run(3))).collect();
    let here = run(3);
    for thread in threads {
        let there = thread.join().expect("the run completes");
        assert!(there.0 == here.0, "trace differs across threads");
        assert_eq!(there.1, here.1);
    }
}
