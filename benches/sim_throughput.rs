//! Simulated datagrams per second through a path with two NATs, on one core.
//!
//! Host A behind a port-restricted cone NAT sends to host B behind another; B's binding is opened
//! first, so every datagram crosses A's uplink, A's NAT (outbound translation), the internet
//! (routing), B's NAT (filter + inbound translation) and B's uplink: four links and three forwarding
//! nodes. Target (issue 2): at least 1,000,000 simulated datagrams per second in release.
//!
//! `cargo bench -p fog-benches --bench sim_throughput`

use std::convert::Infallible;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fog_core::{Receive, SansIo, Transmit};
use fog_sim::Sim;
use fog_sim::link::LinkConfig;
use fog_sim::presets::Preset;

/// Datagrams per measured run.
const DATAGRAMS: u64 = 100_000;
/// Datagrams sent per timer tick, and the tick: 10 per 10 µs, i.e. 1 Mpps of virtual load.
const BATCH: u64 = 10;
const TICK: Duration = Duration::from_micros(10);
const PAYLOAD: usize = 100;

struct Blaster {
    to: SocketAddr,
    left: u64,
    in_batch: u64,
    next: Option<Instant>,
}

impl SansIo for Blaster {
    type Event = Infallible;
    fn handle_packet(&mut self, _now: Instant, _packet: Receive<'_>) {}
    fn handle_timeout(&mut self, now: Instant) {
        if self.next.is_some_and(|t| t <= now) {
            self.in_batch = BATCH.min(self.left);
            self.left -= self.in_batch;
            self.next = (self.left > 0).then(|| now + TICK);
        }
    }
    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        if self.in_batch == 0 {
            return None;
        }
        self.in_batch -= 1;
        buf[..PAYLOAD].fill(0x42);
        Some(Transmit::new(self.to, PAYLOAD))
    }
    fn poll_event(&mut self) -> Option<Infallible> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.next
    }
}

#[derive(Default)]
struct Sink {
    received: u64,
    opener: Option<SocketAddr>,
}

impl SansIo for Sink {
    type Event = Infallible;
    fn handle_packet(&mut self, _now: Instant, _packet: Receive<'_>) {
        self.received += 1;
    }
    fn handle_timeout(&mut self, _now: Instant) {}
    fn poll_transmit(&mut self, _now: Instant, buf: &mut [u8]) -> Option<Transmit> {
        let to = self.opener.take()?;
        buf[0] = 0;
        Some(Transmit::new(to, 1))
    }
    fn poll_event(&mut self) -> Option<Infallible> {
        None
    }
    fn poll_timeout(&self) -> Option<Instant> {
        None
    }
}

/// Builds the two-NAT path, runs `DATAGRAMS` through it, and returns how many arrived.
fn run(seed: u64) -> u64 {
    let mut sim = Sim::new(seed);
    let link = LinkConfig::with_latency(Duration::from_millis(5));
    let a = Preset::PortRestrictedCone.attach(&mut sim, "a", 1, link.clone());
    let b = Preset::PortRestrictedCone.attach(&mut sim, "b", 2, link);
    let a_public: SocketAddr = "203.0.113.1:5000".parse().expect("literal");
    let b_public: SocketAddr = "203.0.113.2:6000".parse().expect("literal");
    // B opens its NAT towards A's future mapping, so that A's datagrams pass B's APDF filter.
    sim.set_machine(
        b.host,
        6000,
        Sink {
            received: 0,
            opener: Some(a_public),
        },
    );
    sim.run_for(Duration::from_millis(50));
    let start = sim.now() + Duration::from_micros(1);
    sim.set_machine(
        a.host,
        5000,
        Blaster {
            to: b_public,
            left: DATAGRAMS,
            in_batch: 0,
            next: Some(start),
        },
    );
    while sim.step() {}
    sim.machine::<Sink>(b.host).received
}

fn bench(c: &mut Criterion) {
    assert_eq!(run(1), DATAGRAMS, "every datagram must cross the two NATs");
    let mut group = c.benchmark_group("sim");
    group.throughput(Throughput::Elements(DATAGRAMS));
    group.sample_size(20);
    group.bench_function("datagrams_through_two_nats", |bencher| {
        bencher.iter(|| black_box(run(black_box(1))))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
