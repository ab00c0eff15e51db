//! `LinkConfig` behaviour seen end to end: hosts attached straight to the internet, a
//! [`RawSocket`] on each, many numbered datagrams from one to the other.
//!
//! A path host → internet → host crosses two links: the sender's uplink and the receiver's. Unless
//! a test says otherwise the property under test is set on the sender's link only and the
//! receiver's link is perfect with zero latency, so what is measured is that one link.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use fog_sim::link::{BurstLoss, LinkConfig, LinkDrop};
use fog_sim::probe::RawSocket;
use fog_sim::{Drop, NodeId, Sim};

const SENDER_IP: &str = "198.51.100.1";
const RECEIVER_IP: &str = "198.51.100.2";
const PORT: u16 = 5000;
/// IPv4 (20) + UDP (8) header bytes, counted against MTU and bandwidth.
const V4_OVERHEAD: usize = 28;
/// IPv6 (40) + UDP (8) header bytes.
const V6_OVERHEAD: usize = 48;
const MS: Duration = Duration::from_millis(1);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn addr(ip_str: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(ip_str), port)
}

/// A perfect link that adds no delay, for the side not under test.
fn transparent() -> LinkConfig {
    LinkConfig::with_latency(Duration::ZERO)
}

/// Two hosts on the internet, each running a `RawSocket` on `PORT`.
struct Pair {
    sim: Sim,
    sender: NodeId,
    receiver: NodeId,
    to_receiver: SocketAddr,
}

impl Pair {
    fn new(seed: u64, sender_link: LinkConfig, receiver_link: LinkConfig) -> Self {
        let mut sim = Sim::new(seed);
        let sender = sim.add_host("sender", NodeId::INTERNET, &[ip(SENDER_IP)], sender_link);
        let receiver = sim.add_host(
            "receiver",
            NodeId::INTERNET,
            &[ip(RECEIVER_IP)],
            receiver_link,
        );
        sim.set_machine(sender, PORT, RawSocket::new());
        sim.set_machine(receiver, PORT, RawSocket::new());
        Self {
            sim,
            sender,
            receiver,
            to_receiver: addr(RECEIVER_IP, PORT),
        }
    }

    /// Queues datagrams numbered `seqs` (a big-endian `u32` each, padded to `len` bytes) at the
    /// current instant; returns that instant.
    fn send_numbered(&mut self, seqs: std::ops::Range<u32>, len: usize) -> Instant {
        let to = self.to_receiver;
        self.sim
            .with_machine(self.sender, |s: &mut RawSocket, now| {
                for seq in seqs {
                    s.send(None, to, &numbered(seq, len));
                }
                now
            })
    }

    /// Sends `count` datagrams, `per_tick` of them every `tick`, then lets the network go quiet.
    /// Returns the send instant of each.
    fn send_paced(&mut self, count: u32, per_tick: u32, tick: Duration) -> Vec<Instant> {
        let mut sent_at = Vec::with_capacity(count as usize);
        let mut next = 0;
        while next < count {
            let end = (next + per_tick).min(count);
            let at = self.send_numbered(next..end, 4);
            sent_at.extend((next..end).map(|_| at));
            next = end;
            self.sim.run_for(tick);
        }
        self.settle();
        sent_at
    }

    /// Runs until nothing is left in flight.
    fn settle(&mut self) {
        self.sim.run_for(Duration::from_secs(10));
        assert_eq!(self.sim.stats().in_flight(), 0, "the network is quiet");
    }

    fn received(&self) -> &[fog_sim::probe::Datagram] {
        self.sim.machine::<RawSocket>(self.receiver).received()
    }

    /// Sequence numbers in arrival order.
    fn arrival_order(&self) -> Vec<u32> {
        self.received().iter().map(|d| seq_of(&d.payload)).collect()
    }
}

fn numbered(seq: u32, len: usize) -> Vec<u8> {
    assert!(len >= 4);
    let mut payload = vec![0; len];
    payload[..4].copy_from_slice(&seq.to_be_bytes());
    payload
}

fn seq_of(payload: &[u8]) -> u32 {
    u32::from_be_bytes(payload[..4].try_into().unwrap())
}

/// How many times each sequence number in `0..count` arrived.
fn copies(order: &[u32], count: u32) -> Vec<u32> {
    let mut copies = vec![0; count as usize];
    for &seq in order {
        copies[seq as usize] += 1;
    }
    copies
}

/// Mean length of the runs of consecutive lost sequence numbers.
fn mean_loss_run(arrived: &[u32]) -> f64 {
    let (mut runs, mut lost, mut in_run) = (0u32, 0u32, false);
    for &c in arrived {
        if c == 0 {
            lost += 1;
            if !in_run {
                runs += 1;
            }
        }
        in_run = c == 0;
    }
    f64::from(lost) / f64::from(runs.max(1))
}

#[test]
fn latency_is_the_exact_sum_of_both_links() {
    let up = Duration::from_micros(7_250);
    let down = Duration::from_micros(2_500);
    let mut p = Pair::new(
        1,
        LinkConfig::with_latency(up),
        LinkConfig::with_latency(down),
    );
    p.sim.run_for(Duration::from_millis(3)); // send at a non-zero instant
    let mut sent_at = Vec::new();
    for round in 0..100 {
        sent_at.push(p.send_numbered(round..round + 1, 4));
        p.sim.run_for(Duration::from_micros(333));
    }
    p.settle();
    let received = p.received();
    assert_eq!(received.len(), 100);
    for (i, d) in received.iter().enumerate() {
        assert_eq!(seq_of(&d.payload), i as u32);
        assert_eq!(d.at - sent_at[i], up + down, "datagram {i}");
        assert_eq!(d.source, addr(SENDER_IP, PORT));
        assert_eq!(d.local, addr(RECEIVER_IP, PORT));
    }

    // The way back crosses the same two links the other way round.
    let sender_addr = addr(SENDER_IP, PORT);
    let at = p.sim.with_machine(p.receiver, |s: &mut RawSocket, now| {
        s.send(None, sender_addr, b"back");
        now
    });
    p.settle();
    let back = p.sim.machine::<RawSocket>(p.sender).received();
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].at - at, up + down);
}

#[test]
fn jitter_without_reorder_keeps_fifo_within_bounds() {
    let latency = Duration::from_millis(10);
    let jitter = Duration::from_millis(5);
    let link = LinkConfig {
        jitter,
        ..LinkConfig::with_latency(latency)
    };
    let in_bounds = |delay: Duration| latency <= delay && delay <= latency + jitter;

    // Sent one per `jitter`, no datagram can catch up with the one ahead, so each delay is the
    // latency plus its own uniform draw.
    let count = 2_000;
    let mut p = Pair::new(2, link.clone(), transparent());
    let sent_at = p.send_paced(count, 1, jitter);
    let received = p.received();
    assert_eq!(received.len(), count as usize, "jitter alone loses nothing");
    let delays: Vec<Duration> = received
        .iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(seq_of(&d.payload), i as u32, "FIFO order kept");
            d.at - sent_at[i]
        })
        .collect();
    assert!(delays.iter().all(|&d| in_bounds(d)), "delays in bounds");
    let min = *delays.iter().min().unwrap();
    let max = *delays.iter().max().unwrap();
    let mean = delays.iter().sum::<Duration>() / count;
    assert!(min < latency + jitter / 50, "min delay {min:?}");
    assert!(max > latency + jitter * 49 / 50, "max delay {max:?}");
    // Uniform on [0, 5 ms]: mean 2.5 ms, standard error 1.44 ms / √2000 ≈ 32 µs.
    let expected_mean = latency + jitter / 2;
    assert!(
        mean.abs_diff(expected_mean) < Duration::from_micros(150),
        "mean delay {mean:?}"
    );

    // Ten per millisecond, datagrams would overtake each other if the draws were used as they
    // are; FIFO holds them behind the one ahead, still within the bounds.
    let count = 10_000;
    let mut p = Pair::new(2, link, transparent());
    let sent_at = p.send_paced(count, 10, MS);
    let received = p.received();
    assert_eq!(received.len(), count as usize);
    for (i, d) in received.iter().enumerate() {
        assert_eq!(seq_of(&d.payload), i as u32, "FIFO order kept");
        let delay = d.at - sent_at[i];
        assert!(in_bounds(delay), "datagram {i}: delay {delay:?}");
    }
}

#[test]
fn random_loss_of_ten_percent() {
    let link = LinkConfig {
        loss: 0.10,
        ..transparent()
    };
    let mut p = Pair::new(3, link, transparent());
    let count = 10_000;
    p.send_numbered(0..count, 4);
    p.settle();

    let order = p.arrival_order();
    let arrived = copies(&order, count);
    assert!(
        arrived.iter().all(|&c| c <= 1),
        "no copies without duplication"
    );
    let delivered = order.len() as f64 / f64::from(count);
    // Binomial(10,000, 0.9): σ = 0.3 pp, so ±1.5 pp is five σ.
    assert!(
        (delivered - 0.90).abs() <= 0.015,
        "delivered fraction {delivered}"
    );
    let missing = u64::from(count) - order.len() as u64;
    let stats = p.sim.stats();
    assert_eq!(stats.dropped(Drop::Link(LinkDrop::Lost)), missing);
    assert_eq!(stats.dropped_total(), missing, "nothing else dropped");
    assert_eq!(stats.sent, u64::from(count));
    assert_eq!(stats.delivered, order.len() as u64);
    // Independent losses come mostly alone: mean run ≈ 1 / (1 − 0.1) ≈ 1.11.
    let run = mean_loss_run(&arrived);
    assert!(run < 1.3, "mean loss run {run}");
}

#[test]
fn bursty_loss_clusters_losses() {
    let count = 10_000;
    // Gilbert–Elliott: never lost when good, always lost when bad; a bad spell lasts 1 / 0.2 = 5
    // datagrams on average and the chain is bad 0.02 / (0.02 + 0.2) ≈ 9.1 % of the time.
    let burst = BurstLoss {
        enter_bad: 0.02,
        leave_bad: 0.2,
        loss_in_bad: 1.0,
    };
    let bursty = LinkConfig {
        burst: Some(burst),
        ..transparent()
    };
    let mut p = Pair::new(4, bursty, transparent());
    p.send_numbered(0..count, 4);
    p.settle();
    let bursty_arrived = copies(&p.arrival_order(), count);
    let bursty_lost = bursty_arrived.iter().filter(|&&c| c == 0).count();
    assert_eq!(
        p.sim.stats().dropped(Drop::Link(LinkDrop::Lost)),
        bursty_lost as u64
    );
    let bursty_rate = bursty_lost as f64 / f64::from(count);
    // Correlated losses have a wider spread than independent ones (about 2.8× here), so the band
    // is wider than the independent test's.
    assert!(
        (bursty_rate - 0.0909).abs() < 0.03,
        "bursty loss rate {bursty_rate}"
    );

    // Independent loss at the same average rate.
    let independent = LinkConfig {
        loss: bursty_rate,
        ..transparent()
    };
    let mut q = Pair::new(4, independent, transparent());
    q.send_numbered(0..count, 4);
    q.settle();
    let independent_arrived = copies(&q.arrival_order(), count);

    let bursty_run = mean_loss_run(&bursty_arrived);
    let independent_run = mean_loss_run(&independent_arrived);
    assert!(
        bursty_run > 3.0 && independent_run < 1.3 && bursty_run > 2.5 * independent_run,
        "mean loss run: bursty {bursty_run}, independent {independent_run}"
    );
}

#[test]
fn reorder_only_when_asked() {
    let count = 10_000;
    let base = LinkConfig {
        jitter: Duration::from_millis(2),
        ..LinkConfig::with_latency(Duration::from_millis(20))
    };
    // Jitter without reordering: never out of order (also checked in the jitter test).
    let mut p = Pair::new(5, base.clone(), transparent());
    p.send_paced(count, 10, MS);
    let order = p.arrival_order();
    assert_eq!(order.len(), count as usize);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "in order");

    let reordering = LinkConfig {
        reorder: 0.05,
        reorder_delay: Duration::from_millis(10),
        ..base
    };
    let mut q = Pair::new(5, reordering, transparent());
    let sent_at = q.send_paced(count, 10, MS);
    let order = q.arrival_order();
    assert_eq!(order.len(), count as usize, "reordering loses nothing");
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..count).collect::<Vec<_>>(), "each exactly once");
    let descents = order.windows(2).filter(|w| w[0] > w[1]).count();
    // About 5 % are picked; a picked one lands up to 10 ms late and is overtaken by those sent
    // after it, so roughly each pick causes one descent.
    assert!(
        (200..=800).contains(&descents),
        "{descents} descents in arrival order"
    );
    for d in q.received() {
        let delay = d.at - sent_at[seq_of(&d.payload) as usize];
        assert!(
            delay >= Duration::from_millis(20) && delay <= Duration::from_millis(30),
            "delay {delay:?}"
        );
    }
}

#[test]
fn duplicates_arrive_with_probability_p() {
    let count = 10_000;
    let link = LinkConfig {
        duplicate: 0.05,
        ..LinkConfig::with_latency(Duration::from_millis(5))
    };
    let mut p = Pair::new(6, link, transparent());
    p.send_numbered(0..count, 4);
    p.settle();
    let order = p.arrival_order();
    let arrived = copies(&order, count);
    assert!(
        arrived.iter().all(|&c| c == 1 || c == 2),
        "each arrives once or twice"
    );
    let extra = order.len() as u64 - u64::from(count);
    // Binomial(10,000, 0.05): mean 500, σ ≈ 22.
    assert!((400..=600).contains(&extra), "{extra} duplicates");
    let stats = p.sim.stats();
    assert_eq!(stats.duplicated, extra);
    assert_eq!(stats.delivered, order.len() as u64);
    assert_eq!(stats.dropped_total(), 0);
}

#[test]
fn duplicates_with_jitter_keep_time_and_fifo() {
    // Each copy of a duplicated datagram draws its own jitter; both must still arrive within
    // [latency, latency + jitter], and no machine may see `now` go backwards. On the sender's
    // uplink the fault shows only as a panic in debug builds (the receiver's FIFO link repairs
    // the order); on the last hop a release build delivers with time going backwards.
    let count = 2_000;
    let latency = Duration::from_millis(5);
    let jitter = Duration::from_millis(3);
    let link = LinkConfig {
        jitter,
        duplicate: 0.2,
        ..LinkConfig::with_latency(latency)
    };
    for (sender_link, receiver_link) in
        [(link.clone(), transparent()), (transparent(), link.clone())]
    {
        let mut p = Pair::new(7, sender_link, receiver_link);
        let sent_at = p.send_paced(count, 4, MS);
        let received = p.received();
        let order = p.arrival_order();
        let arrived = copies(&order, count);
        assert!(arrived.iter().all(|&c| c == 1 || c == 2));
        assert!(
            order.windows(2).all(|w| w[0] <= w[1]),
            "FIFO, copies adjacent"
        );
        assert!(
            received.windows(2).all(|w| w[0].at <= w[1].at),
            "time runs forward"
        );
        for d in received {
            let delay = d.at - sent_at[seq_of(&d.payload) as usize];
            assert!(
                latency <= delay && delay <= latency + jitter,
                "delay {delay:?}"
            );
        }
    }
}

#[test]
fn bandwidth_spaces_arrivals_and_tail_drops() {
    let bps = 1_000_000;
    let ip_len = 1_000;
    let payload = ip_len - V4_OVERHEAD;
    // 1,000 bytes at 1 Mbit/s: 8 ms on the wire each.
    let serialisation = Duration::from_nanos(ip_len as u64 * 8 * 1_000_000_000 / bps);
    assert_eq!(serialisation, Duration::from_millis(8));
    let latency = Duration::from_millis(10);
    let link = LinkConfig {
        bandwidth_bps: Some(bps),
        queue_limit_bytes: 10 * ip_len,
        ..LinkConfig::with_latency(latency)
    };
    let mut p = Pair::new(8, link, transparent());

    // A burst of 50 into a queue of 10: 10 pass, 40 are tail-dropped.
    let t0 = p.send_numbered(0..50, payload);
    p.settle();
    let received = p.received().to_vec();
    assert_eq!(received.len(), 10);
    for (i, d) in received.iter().enumerate() {
        assert_eq!(seq_of(&d.payload), i as u32, "the head of the burst passes");
        // Store and forward: the first leaves once it is fully on the wire.
        assert_eq!(
            d.at - t0,
            latency + serialisation * (i as u32 + 1),
            "datagram {i}"
        );
    }
    for w in received.windows(2) {
        assert_eq!(w[1].at - w[0].at, serialisation);
    }
    assert_eq!(p.sim.stats().dropped(Drop::Link(LinkDrop::QueueFull)), 40);
    assert_eq!(p.sim.stats().dropped_total(), 40);

    // The queue drains at line rate: 40 ms into a fresh 80 ms backlog, 5 datagrams have left
    // and there is room for 5 more.
    p.sim
        .with_machine(p.receiver, |s: &mut RawSocket, _| s.clear());
    let t1 = p.send_numbered(100..120, payload);
    p.sim.run_for(serialisation * 5);
    p.send_numbered(200..220, payload);
    p.settle();
    let order = p.arrival_order();
    let expected: Vec<u32> = (100..110).chain(200..205).collect();
    assert_eq!(order, expected);
    let last = p.received().last().unwrap();
    assert_eq!(
        last.at - t1,
        latency + serialisation * 15,
        "no gap on the wire"
    );
    assert_eq!(
        p.sim.stats().dropped(Drop::Link(LinkDrop::QueueFull)),
        40 + 10 + 15
    );
}

#[test]
fn mtu_counts_ip_and_udp_headers() {
    let v6_sender = ip("2001:db8::1");
    let v6_receiver = ip("2001:db8::2");
    let mut sim = Sim::new(9);
    let sender = sim.add_host(
        "sender",
        NodeId::INTERNET,
        &[ip(SENDER_IP), v6_sender],
        LinkConfig::default(),
    );
    // A narrower link on the receiving side: the MTU applies on the way down too.
    let narrow = sim.add_host(
        "narrow",
        NodeId::INTERNET,
        &[ip(RECEIVER_IP), v6_receiver],
        LinkConfig {
            mtu: 1280,
            ..LinkConfig::default()
        },
    );
    sim.set_machine(sender, PORT, RawSocket::new());
    sim.set_machine(narrow, PORT, RawSocket::new());
    let v4 = addr(RECEIVER_IP, PORT);
    let v6 = SocketAddr::new(v6_receiver, PORT);
    let too_big = Drop::Link(LinkDrop::TooBig);

    let send = |sim: &mut Sim, to: SocketAddr, len: usize| {
        sim.with_machine(sender, |s: &mut RawSocket, _| {
            s.send(None, to, &vec![0; len])
        });
        sim.run_for(Duration::from_millis(100));
        sim.with_machine(narrow, |s: &mut RawSocket, _| {
            let got = s
                .received()
                .iter()
                .map(|d| d.payload.len())
                .collect::<Vec<_>>();
            s.clear();
            got
        })
    };

    assert_eq!(send(&mut sim, v4, 1280 - V4_OVERHEAD), vec![1252]);
    assert_eq!(send(&mut sim, v4, 1281 - V4_OVERHEAD), Vec::<usize>::new());
    assert_eq!(sim.stats().dropped(too_big), 1);
    assert_eq!(send(&mut sim, v6, 1280 - V6_OVERHEAD), vec![1232]);
    assert_eq!(send(&mut sim, v6, 1281 - V6_OVERHEAD), Vec::<usize>::new());
    assert_eq!(sim.stats().dropped(too_big), 2);
    // Beyond the sender's own 1500-byte MTU.
    assert_eq!(send(&mut sim, v4, 1501 - V4_OVERHEAD), Vec::<usize>::new());
    assert_eq!(send(&mut sim, v6, 1501 - V6_OVERHEAD), Vec::<usize>::new());
    assert_eq!(sim.stats().dropped(too_big), 4);
    assert_eq!(sim.stats().dropped_total(), 4);

    // The other way: 1,500 bytes fit the sender's link (and the narrow host's is the bottleneck).
    let back = addr(SENDER_IP, PORT);
    sim.with_machine(narrow, |s: &mut RawSocket, _| {
        s.send(None, back, &vec![0; 1280 - V4_OVERHEAD]);
        s.send(None, back, &vec![0; 1281 - V4_OVERHEAD]);
    });
    sim.run_for(Duration::from_millis(100));
    let got: Vec<usize> = sim
        .machine::<RawSocket>(sender)
        .received()
        .iter()
        .map(|d| d.payload.len())
        .collect();
    assert_eq!(got, vec![1252]);
    assert_eq!(sim.stats().dropped(too_big), 5);
}

#[test]
fn ipv6_hosts_talk_and_v4_only_hosts_cannot_reach_v6() {
    let mut sim = Sim::new(10);
    let a6: IpAddr = ip("2001:db8:a::1");
    let b6: IpAddr = ip("2001:db8:b::1");
    let a = sim.add_host("a", NodeId::INTERNET, &[a6], LinkConfig::default());
    let b = sim.add_host(
        "b",
        NodeId::INTERNET,
        &[ip(RECEIVER_IP), b6],
        LinkConfig::default(),
    );
    let v4_only = sim.add_host(
        "v4only",
        NodeId::INTERNET,
        &[ip(SENDER_IP)],
        LinkConfig::default(),
    );
    for host in [a, b, v4_only] {
        sim.set_machine(host, PORT, RawSocket::new());
    }
    let to_b = SocketAddr::new(b6, 6000);
    let to_a = SocketAddr::new(a6, PORT);
    sim.with_machine(a, |s: &mut RawSocket, _| {
        for i in 0..100u32 {
            s.send(None, to_b, &i.to_be_bytes());
        }
    });
    sim.with_machine(b, |s: &mut RawSocket, _| {
        // Unspecified IP: the host's address of the destination's family.
        s.send(Some("[::]:7000".parse().unwrap()), to_a, b"from b");
    });
    sim.run_for(Duration::from_millis(100));

    let at_b = sim.machine::<RawSocket>(b).received();
    assert_eq!(at_b.len(), 100);
    assert!(at_b.iter().all(|d| d.source == to_a && d.local == to_b));
    let at_a = sim.machine::<RawSocket>(a).received();
    assert_eq!(at_a.len(), 1);
    assert_eq!(at_a[0].source, SocketAddr::new(b6, 7000));
    assert_eq!(at_a[0].payload, b"from b");

    // A host with no IPv6 address cannot send to one, and one with no IPv4 address not to IPv4.
    sim.with_machine(v4_only, |s: &mut RawSocket, _| s.send(None, to_a, b"x"));
    sim.with_machine(a, |s: &mut RawSocket, _| {
        s.send(None, addr(RECEIVER_IP, PORT), b"x")
    });
    sim.run_for(Duration::from_millis(100));
    let stats = sim.stats();
    assert_eq!(stats.dropped(Drop::NoAddressForFamily), 2);
    assert_eq!(stats.dropped_total(), 2);
    assert_eq!(stats.sent, 103);
    assert_eq!(stats.delivered, 101);
    assert_eq!(stats.in_flight(), 0);
}

#[test]
fn bad_source_and_no_route() {
    let mut p = Pair::new(11, LinkConfig::default(), LinkConfig::default());
    let to = p.to_receiver;
    p.sim.with_machine(p.sender, |s: &mut RawSocket, _| {
        // An address the host does not own.
        s.send(Some(addr("198.51.100.99", PORT)), to, b"spoofed");
        // Its own address, another port: fine.
        s.send(Some(addr(SENDER_IP, 4000)), to, b"own");
        // Its own IPv4 address towards an IPv6 destination: not a source for that family.
        s.send(
            Some(addr(SENDER_IP, 4000)),
            "[2001:db8::9]:1".parse().unwrap(),
            b"family",
        );
        // Nobody has this address.
        s.send(None, addr("203.0.113.77", 9), b"nowhere");
    });
    p.sim.run_for(Duration::from_millis(100));

    let got = p.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].payload, b"own");
    assert_eq!(got[0].source, addr(SENDER_IP, 4000));
    let stats = p.sim.stats();
    assert_eq!(stats.dropped(Drop::BadSource), 2);
    assert_eq!(stats.dropped(Drop::NoRoute), 1);
    assert_eq!(stats.dropped_total(), 3);
    assert_eq!(stats.sent, 4);
    assert_eq!(stats.in_flight(), 0);
}
