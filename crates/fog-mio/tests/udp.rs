//! fog-mio on real loopback sockets: ping-pong over IPv4 and IPv6 with timers, on-demand source
//! binding, TTL hints and shutdown from another thread.

// Tests read the wall clock for their own deadlines; only protocol crates must not.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use fog_core::{Receive, SansIo, Transmit};
use fog_mio::{Config, Driver, Status};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// How long a ping waits for its pong before it is sent again.
const RETRANSMIT_AFTER: Duration = Duration::from_millis(200);
/// The gap between a pong and the next ping, so that every ping after the first leaves from
/// `handle_timeout`.
const PACE: Duration = Duration::from_millis(1);
/// How long the pinger waits after the last pong before it reports `Done`, from a timer.
const LINGER: Duration = Duration::from_millis(20);
/// No test should come near this.
const TEST_DEADLINE: Duration = Duration::from_secs(10);

fn ping_payload(seq: u32) -> Vec<u8> {
    // Lengths vary with the sequence number, and the bytes depend on it, so a pong carrying
    // another ping's payload, or a truncated one, is caught.
    let mut payload = b"ping".to_vec();
    payload.extend_from_slice(&seq.to_be_bytes());
    payload.extend((0..(seq * 37) % 1200).map(|i| (i as u8) ^ (seq as u8)));
    payload
}

fn pong_payload(seq: u32) -> Vec<u8> {
    let mut payload = ping_payload(seq);
    payload[..4].copy_from_slice(b"pong");
    payload
}

fn seq_of(payload: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(payload.get(4..8)?.try_into().ok()?))
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PingEvent {
    Pong { seq: u32, payload: Vec<u8> },
    Done,
}

/// Sends `count` pings one at a time, each after the previous pong; retransmits on a timer and
/// reports `Done` from a timer once every pong is in.
struct Pinger {
    peer: SocketAddr,
    count: u32,
    /// The ping waiting for its pong.
    next: u32,
    /// The current ping is to be sent at the next `poll_transmit`.
    send: bool,
    send_at: Option<Instant>,
    retransmit_at: Option<Instant>,
    finish_at: Option<Instant>,
    retransmits: u32,
    timers_fired: u32,
    events: VecDeque<PingEvent>,
}

impl Pinger {
    fn new(peer: SocketAddr, count: u32) -> Self {
        Self {
            peer,
            count,
            next: 0,
            send: true,
            send_at: None,
            retransmit_at: None,
            finish_at: None,
            retransmits: 0,
            timers_fired: 0,
            events: VecDeque::new(),
        }
    }
}

impl SansIo for Pinger {
    type Event = PingEvent;

    fn accepts(&self, packet: &Receive<'_>) -> bool {
        packet.payload.starts_with(b"pong")
    }

    fn handle_packet(&mut self, now: Instant, packet: Receive<'_>) {
        assert_eq!(packet.source, self.peer);
        let Some(seq) = seq_of(packet.payload) else {
            return;
        };
        if seq != self.next {
            return; // the pong of a retransmitted ping that was answered already
        }
        self.events.push_back(PingEvent::Pong {
            seq,
            payload: packet.payload.to_vec(),
        });
        self.retransmit_at = None;
        self.next += 1;
        if self.next == self.count {
            self.finish_at = Some(now + LINGER);
        } else {
            self.send_at = Some(now + PACE);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        if self.send_at.is_some_and(|t| t <= now) {
            self.timers_fired += 1;
            self.send_at = None;
            self.send = true;
        }
        if self.retransmit_at.is_some_and(|t| t <= now) {
            self.timers_fired += 1;
            self.retransmits += 1;
            self.retransmit_at = None;
            self.send = true;
        }
        if self.finish_at.is_some_and(|t| t <= now) {
            self.timers_fired += 1;
            self.finish_at = None;
            self.events.push_back(PingEvent::Done);
        }
    }

    fn poll_transmit(&mut self, now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if !self.send {
            return None;
        }
        self.send = false;
        self.retransmit_at = Some(now + RETRANSMIT_AFTER);
        let payload = ping_payload(self.next);
        buf[..payload.len()].copy_from_slice(&payload);
        Some(Transmit::new(self.peer, payload.len()))
    }

    fn poll_event(&mut self) -> Option<PingEvent> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        [self.send_at, self.retransmit_at, self.finish_at]
            .into_iter()
            .flatten()
            .min()
    }
}

/// Answers each ping with the matching pong, from the socket the ping arrived on; rejects
/// anything that is not a ping.
#[derive(Default)]
struct Echoer {
    queue: VecDeque<(SocketAddr, SocketAddr, u32)>,
    echoed: Vec<u32>,
    events: VecDeque<u32>,
}

impl SansIo for Echoer {
    type Event = u32;

    fn accepts(&self, packet: &Receive<'_>) -> bool {
        packet.payload.starts_with(b"ping")
    }

    fn handle_packet(&mut self, _now: Instant, packet: Receive<'_>) {
        let seq = seq_of(packet.payload).expect("a ping carries its sequence number");
        assert_eq!(
            packet.payload,
            ping_payload(seq),
            "ping {seq} arrived intact"
        );
        self.queue.push_back((packet.local, packet.source, seq));
        self.echoed.push(seq);
        self.events.push_back(seq);
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (local, peer, seq) = self.queue.pop_front()?;
        let payload = pong_payload(seq);
        buf[..payload.len()].copy_from_slice(&payload);
        Some(Transmit::new(peer, payload.len()).from_source(local))
    }

    fn poll_event(&mut self) -> Option<u32> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// A datagram as a [`Probe`] saw it arrive.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Arrival {
    source: SocketAddr,
    local: SocketAddr,
    payload: Vec<u8>,
}

/// Sends whatever the test queues (any source, any hints) and reports every datagram it
/// receives; when `reflect` is set it also sends each one back from where it arrived.
#[derive(Default)]
struct Probe {
    reflect: bool,
    queue: VecDeque<(Transmit, Vec<u8>)>,
    arrivals: VecDeque<Arrival>,
}

impl Probe {
    fn reflector() -> Self {
        Self {
            reflect: true,
            ..Self::default()
        }
    }

    fn send(&mut self, transmit: Transmit, payload: &[u8]) {
        assert_eq!(transmit.len, payload.len());
        self.queue.push_back((transmit, payload.to_vec()));
    }
}

impl SansIo for Probe {
    type Event = Arrival;

    fn handle_packet(&mut self, _now: Instant, packet: Receive<'_>) {
        if self.reflect {
            let transmit =
                Transmit::new(packet.source, packet.payload.len()).from_source(packet.local);
            self.queue.push_back((transmit, packet.payload.to_vec()));
        }
        self.arrivals.push_back(Arrival {
            source: packet.source,
            local: packet.local,
            payload: packet.payload.to_vec(),
        });
    }

    fn handle_timeout(&mut self, _now: Instant) {}

    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let (transmit, payload) = self.queue.pop_front()?;
        buf[..payload.len()].copy_from_slice(&payload);
        Some(transmit)
    }

    fn poll_event(&mut self) -> Option<Arrival> {
        self.arrivals.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

fn any_port(ip: IpAddr) -> SocketAddr {
    SocketAddr::new(ip, 0)
}

/// Whether `::1` can be bound here; prints why the test is skipped when it cannot.
fn ipv6_loopback_available() -> bool {
    match UdpSocket::bind((Ipv6Addr::LOCALHOST, 0)) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("note: IPv6 loopback unavailable ({e}); skipping the ::1 test");
            false
        }
    }
}

/// A port on `ip` that nothing is bound to right now.
fn free_port(ip: IpAddr) -> SocketAddr {
    UdpSocket::bind((ip, 0)).unwrap().local_addr().unwrap()
}

/// Steps `a` and `b` alternately in this thread, collecting their events, until `done` says so.
fn step_pair<A: SansIo, B: SansIo>(
    a: &mut Driver<A>,
    b: &mut Driver<B>,
    a_events: &mut Vec<A::Event>,
    b_events: &mut Vec<B::Event>,
    done: impl Fn(&[A::Event], &[B::Event]) -> bool,
) {
    let deadline = Instant::now() + TEST_DEADLINE;
    while !done(a_events, b_events) {
        assert!(Instant::now() < deadline, "test did not finish in time");
        let step = Some(Duration::from_millis(2));
        assert_eq!(
            a.turn(step, |_, e| a_events.push(e)).unwrap(),
            Status::Running
        );
        assert_eq!(
            b.turn(step, |_, e| b_events.push(e)).unwrap(),
            Status::Running
        );
    }
}

fn assert_all_pongs(events: &[PingEvent], count: u32) {
    let (last, pongs) = events.split_last().expect("some events");
    assert_eq!(*last, PingEvent::Done, "Done comes last");
    assert_eq!(pongs.len(), count as usize, "one pong per ping: {pongs:?}");
    for (seq, event) in (0..count).zip(pongs) {
        let expected = PingEvent::Pong {
            seq,
            payload: pong_payload(seq),
        };
        assert_eq!(*event, expected);
    }
}

/// Checks what the pinger's timers and the two drivers' counters say about a finished exchange.
fn assert_exchange(ping: &Driver<Pinger>, echo_stats: fog_mio::Stats, count: u32) {
    let pinger = ping.machine();
    // Every ping after the first was paced by a timer, and Done came from one: the path
    // poll_timeout -> mio wait -> handle_timeout works.
    assert!(
        pinger.timers_fired >= count,
        "timers fired: {}",
        pinger.timers_fired
    );
    assert!(ping.stats().timeouts >= u64::from(count));
    let sent = u64::from(count + pinger.retransmits);
    assert_eq!(ping.stats().sent, sent);
    assert_eq!(ping.stats().send_errors, 0);
    assert_eq!(ping.stats().rejected, 0);
    assert_eq!(
        echo_stats.received,
        sent + 1,
        "every ping and the junk datagram"
    );
    assert_eq!(echo_stats.rejected, 1, "the junk datagram");
    assert_eq!(echo_stats.sent, sent);
    assert_eq!(echo_stats.send_errors, 0);
}

/// Ping-pong between two drivers over `ip`, both stepped in this thread.
fn ping_pong_stepped(ip: IpAddr) {
    const COUNT: u32 = 50;
    let mut echo = Driver::new(Echoer::default(), &[any_port(ip)]).unwrap();
    let echo_addr = echo.local_addrs()[0];
    assert_eq!(echo_addr.ip(), ip);
    assert_ne!(echo_addr.port(), 0, "the bound port is resolved");
    let mut ping = Driver::new(Pinger::new(echo_addr, COUNT), &[any_port(ip)]).unwrap();

    // A datagram the echoer does not accept is counted and dropped, not answered.
    let stranger = UdpSocket::bind((ip, 0)).unwrap();
    stranger.send_to(b"junk", echo_addr).unwrap();

    let (mut events, mut echoed) = (Vec::new(), Vec::new());
    step_pair(
        &mut ping,
        &mut echo,
        &mut events,
        &mut echoed,
        |events, _| events.last() == Some(&PingEvent::Done),
    );

    assert_all_pongs(&events, COUNT);
    assert_eq!(echo.machine().echoed, echoed);
    assert_exchange(&ping, echo.stats(), COUNT);
}

/// Ping-pong over `ip` with the echoer running in its own thread, stopped by its handle.
fn ping_pong_threaded(ip: IpAddr) {
    const COUNT: u32 = 50;
    let mut echo = Driver::new(Echoer::default(), &[any_port(ip)]).unwrap();
    let echo_addr = echo.local_addrs()[0];
    let echo_handle = echo.handle();
    let echo_thread = thread::spawn(move || {
        echo.run(|_, _seq| {}).unwrap();
        (echo.stats(), echo.into_machine())
    });

    let stranger = UdpSocket::bind((ip, 0)).unwrap();
    stranger.send_to(b"junk", echo_addr).unwrap();

    let mut ping = Driver::new(Pinger::new(echo_addr, COUNT), &[any_port(ip)]).unwrap();
    let mut events = Vec::new();
    let deadline = Instant::now() + TEST_DEADLINE;
    while events.last() != Some(&PingEvent::Done) {
        assert!(Instant::now() < deadline, "test did not finish in time");
        let status = ping
            .run_until(Instant::now() + Duration::from_millis(50), |_, e| {
                events.push(e)
            })
            .unwrap();
        assert_eq!(status, Status::Running);
    }

    echo_handle.shutdown().unwrap();
    let (echo_stats, echoer) = echo_thread.join().unwrap();
    assert_all_pongs(&events, COUNT);
    let mut unique = echoer.echoed.clone();
    unique.dedup();
    assert_eq!(unique, (0..COUNT).collect::<Vec<_>>());
    assert_exchange(&ping, echo_stats, COUNT);
}

#[test]
fn ping_pong_over_ipv4_loopback() {
    ping_pong_stepped(V4);
}

#[test]
fn ping_pong_over_ipv6_loopback() {
    if ipv6_loopback_available() {
        ping_pong_stepped(V6);
    }
}

#[test]
fn ping_pong_over_ipv4_loopback_across_threads() {
    ping_pong_threaded(V4);
}

#[test]
fn ping_pong_over_ipv6_loopback_across_threads() {
    if ipv6_loopback_available() {
        ping_pong_threaded(V6);
    }
}

#[test]
fn one_driver_serves_both_families() {
    if !ipv6_loopback_available() {
        return;
    }
    let mut reflector = Driver::new(Probe::reflector(), &[any_port(V4), any_port(V6)]).unwrap();
    let [v4, v6] = reflector.local_addrs() else {
        panic!("two sockets");
    };
    let (v4, v6) = (*v4, *v6);
    assert!(v4.is_ipv4() && v6.is_ipv6());
    let mut probe = Driver::new(Probe::default(), &[any_port(V4), any_port(V6)]).unwrap();
    // Source `None`: each leaves from the probe's socket of the destination's family.
    probe.machine_mut().send(Transmit::new(v4, 2), b"v4");
    probe.machine_mut().send(Transmit::new(v6, 2), b"v6");

    let (mut arrivals, mut reflected) = (Vec::new(), Vec::new());
    step_pair(
        &mut probe,
        &mut reflector,
        &mut arrivals,
        &mut reflected,
        |a, _| a.len() == 2,
    );
    arrivals.sort_by_key(|a| a.payload.clone());
    assert_eq!(arrivals[0].payload, b"v4");
    assert_eq!(arrivals[0].source, v4);
    assert_eq!(arrivals[0].local, probe.local_addrs()[0]);
    assert_eq!(arrivals[1].payload, b"v6");
    assert_eq!(arrivals[1].source, v6);
    assert_eq!(arrivals[1].local, probe.local_addrs()[1]);
}

#[test]
fn a_new_source_port_is_bound_on_demand_and_receives_replies() {
    let mut reflector = Driver::new(Probe::reflector(), &[any_port(V4)]).unwrap();
    let target = reflector.local_addrs()[0];
    let mut probe = Driver::new(Probe::default(), &[any_port(V4)]).unwrap();
    let hop = free_port(V4);

    probe
        .machine_mut()
        .send(Transmit::new(target, 3).from_source(hop), b"hop");
    probe.drain(|_, _| {});
    assert_eq!(probe.stats().bound_on_demand, 1);
    assert_eq!(probe.local_addrs(), [probe.local_addrs()[0], hop]);

    let (mut arrivals, mut reflected) = (Vec::new(), Vec::new());
    step_pair(
        &mut probe,
        &mut reflector,
        &mut arrivals,
        &mut reflected,
        |a, _| !a.is_empty(),
    );
    assert_eq!(
        reflected[0].source, hop,
        "the datagram left from the new port"
    );
    assert_eq!(
        arrivals[0],
        Arrival {
            source: target,
            local: hop,
            payload: b"hop".to_vec()
        },
        "the reply arrived on the new socket"
    );

    // The same source again reuses the socket.
    probe
        .machine_mut()
        .send(Transmit::new(target, 5).from_source(hop), b"again");
    step_pair(
        &mut probe,
        &mut reflector,
        &mut arrivals,
        &mut reflected,
        |a, _| a.len() == 2,
    );
    assert_eq!(arrivals[1].local, hop);
    assert_eq!(probe.stats().bound_on_demand, 1);
    assert_eq!(probe.local_addrs().len(), 2);
}

#[test]
fn sources_beyond_the_on_demand_cap_are_dropped_and_counted() {
    let sink = UdpSocket::bind((V4, 0)).unwrap();
    let target = sink.local_addr().unwrap();
    let config = Config::new().max_on_demand_sockets(1);
    let mut probe = Driver::with_config(Probe::default(), &[any_port(V4)], config).unwrap();
    let (first, second) = (free_port(V4), free_port(V4));

    probe
        .machine_mut()
        .send(Transmit::new(target, 1).from_source(first), b"1");
    probe
        .machine_mut()
        .send(Transmit::new(target, 1).from_source(second), b"2");
    probe.drain(|_, _| {});

    let stats = probe.stats();
    assert_eq!(stats.bound_on_demand, 1);
    assert_eq!(stats.dropped_unknown_source, 1);
    assert_eq!(stats.sent, 1);
    let mut buf = [0u8; 16];
    let (len, from) = sink.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..len], from), (&b"1"[..], first));
}

fn ttl_hints_do_not_break_sends(ip: IpAddr) {
    let mut reflector = Driver::new(Probe::reflector(), &[any_port(ip)]).unwrap();
    let target = reflector.local_addrs()[0];
    let mut probe = Driver::new(Probe::default(), &[any_port(ip)]).unwrap();
    // Loopback delivers without forwarding, so even a TTL of 1 arrives; the unhinted datagrams
    // between and after the hinted ones check that the default comes back.
    let plan: [(Option<u8>, &[u8]); 5] = [
        (Some(1), b"ttl 1"),
        (Some(2), b"ttl 2"),
        (None, b"default"),
        (Some(255), b"ttl 255"),
        (None, b"default again"),
    ];
    for (ttl, payload) in plan {
        let transmit = Transmit::new(target, payload.len());
        let transmit = match ttl {
            Some(ttl) => transmit.with_ttl(ttl),
            None => transmit,
        };
        probe.machine_mut().send(transmit, payload);
    }

    let (mut arrivals, mut reflected) = (Vec::new(), Vec::new());
    step_pair(
        &mut probe,
        &mut reflector,
        &mut arrivals,
        &mut reflected,
        |a, _| a.len() == plan.len(),
    );
    let payloads: Vec<&[u8]> = reflected.iter().map(|a| &a.payload[..]).collect();
    assert_eq!(payloads, plan.map(|(_, p)| p));
    let stats = probe.stats();
    assert_eq!((stats.sent, stats.ttl_errors, stats.send_errors), (5, 0, 0));
}

#[test]
fn ttl_hints_do_not_break_sends_over_ipv4() {
    ttl_hints_do_not_break_sends(V4);
}

#[test]
fn ttl_hints_do_not_break_sends_over_ipv6() {
    if ipv6_loopback_available() {
        ttl_hints_do_not_break_sends(V6);
    }
}

#[test]
fn shutdown_from_another_thread_ends_run() {
    let mut driver = Driver::new(Probe::default(), &[any_port(V4)]).unwrap();
    let handle = driver.handle();
    let (done_tx, done_rx) = mpsc::channel();
    let runner = thread::spawn(move || {
        // No timer and no traffic: only the handle can end this.
        let result = driver.run(|_, _| {});
        done_tx.send(()).unwrap();
        result
    });

    thread::sleep(Duration::from_millis(50));
    assert!(
        done_rx.try_recv().is_err(),
        "run waits while nothing happens"
    );
    assert!(!handle.is_shutdown());
    handle.shutdown().unwrap();
    done_rx
        .recv_timeout(Duration::from_secs(5))
        .expect("run returned after shutdown");
    runner.join().unwrap().unwrap();
    assert!(handle.is_shutdown());
}

#[test]
fn shutdown_is_sticky_and_wake_only_interrupts_a_wait() {
    let mut driver = Driver::new(Probe::default(), &[any_port(V4)]).unwrap();
    let handle = driver.handle();

    let waker = handle.clone();
    let started = Instant::now();
    let wake_thread = thread::spawn(move || {
        thread::sleep(Duration::from_millis(20));
        waker.wake().unwrap();
    });
    // Without the wake this turn would wait a minute.
    let status = driver
        .turn(Some(Duration::from_secs(60)), |_, _| {})
        .unwrap();
    wake_thread.join().unwrap();
    assert_eq!(status, Status::Running);
    assert!(started.elapsed() < Duration::from_secs(30));

    handle.shutdown().unwrap();
    assert_eq!(driver.turn(None, |_, _| {}).unwrap(), Status::Shutdown);
    assert_eq!(driver.turn(None, |_, _| {}).unwrap(), Status::Shutdown);
    let far = Instant::now() + Duration::from_secs(60);
    assert_eq!(driver.run_until(far, |_, _| {}).unwrap(), Status::Shutdown);
    driver.run(|_, _| {}).unwrap();
}

#[test]
fn run_until_returns_at_its_deadline() {
    let mut driver = Driver::new(Probe::default(), &[any_port(V4)]).unwrap();
    let started = Instant::now();
    let deadline = started + Duration::from_millis(30);
    assert_eq!(
        driver.run_until(deadline, |_, _| {}).unwrap(),
        Status::Running
    );
    assert!(Instant::now() >= deadline);
    assert!(started.elapsed() < Duration::from_secs(5));
}
