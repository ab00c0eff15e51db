//! Binding requests answered per second by the STUN server machine alone, on one core: each
//! request is `handle_packet` of a pre-encoded datagram and `poll_transmit` of its answer into a
//! reused buffer, as fog-mio drives it, without sockets.
//!
//! `cargo bench -p fog-benches --bench stun_server`
//!
//! - `no_rate_limit`: `ServerConfig::rate_limit = None`, what `fogd --stun-no-rate-limit` runs;
//!   every request comes from one source.
//! - `rate_limited`: the default limit (20/s, burst 40 per source IP), with requests spread over
//!   1,024 source IPs and `now` advancing 100 µs per request, so each source asks every 102 ms,
//!   under its 20/s: every request is answered and the limiter's bookkeeping is what the
//!   difference to `no_rate_limit` costs.
//! - `change_request`: RFC 5780 test II, CHANGE-REQUEST with both flags and FINGERPRINT, on the
//!   no-limit server.
//!
//! The figure of one request is the median time per batch divided by the batch; throughput is
//! in "elements" = answered requests.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use fog_core::{Receive, SansIo};
use fog_stun::server::{RateLimit, Server, ServerConfig};
use fog_stun::wire::{BindingRequest, TransactionId};

/// Requests per measured batch.
const BATCH: u64 = 10_000;
/// Distinct source IPs in `rate_limited`, and the virtual time between two requests.
const SOURCES: u32 = 1_024;
const STEP: Duration = Duration::from_micros(100);

fn config(rate_limit: Option<RateLimit>) -> ServerConfig {
    let primary: SocketAddr = "192.0.2.1:3478".parse().unwrap();
    let mut config = ServerConfig::new(primary).with_alternate("192.0.2.2".parse().unwrap(), 3479);
    config.rate_limit = rate_limit;
    config
}

fn encode(request: BindingRequest) -> Vec<u8> {
    let mut buf = vec![0u8; 1500];
    let len = request.encode(&mut buf).unwrap();
    buf.truncate(len);
    buf
}

/// Feeds `BATCH` requests to `server`, from `source(i)` at `epoch + i * step`, and drains each
/// answer; returns how many were answered.
fn run(
    server: &mut Server,
    request: &[u8],
    epoch: Instant,
    step: Duration,
    source: impl Fn(u64) -> SocketAddr,
    buf: &mut [u8],
) -> u64 {
    let local = server.config().primary;
    let mut answered = 0;
    for i in 0..BATCH {
        let now = epoch + step * i as u32;
        let packet = Receive {
            source: source(i),
            local,
            payload: request,
        };
        server.handle_packet(now, black_box(packet));
        while let Some(transmit) = server.poll_transmit(now, buf) {
            black_box(&buf[..transmit.len]);
            answered += 1;
        }
    }
    answered
}

fn client(i: u64) -> SocketAddr {
    let n = (i % u64::from(SOURCES)) as u32;
    SocketAddr::new(IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + n)), 50_000)
}

fn bench(c: &mut Criterion) {
    let plain = encode(BindingRequest::new(TransactionId::new([7; 12])));
    let change = encode(BindingRequest {
        change_ip: true,
        change_port: true,
        fingerprint: true,
        ..BindingRequest::new(TransactionId::new([8; 12]))
    });
    let mut buf = vec![0u8; 65_535];
    // Benches may read the clock: any epoch will do for the machine.
    #[allow(clippy::disallowed_methods)]
    let epoch = Instant::now();

    let mut group = c.benchmark_group("stun_server");
    group.throughput(Throughput::Elements(BATCH));

    let one_source = |_| SocketAddr::new(IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)), 50_000);
    group.bench_function("no_rate_limit", |b| {
        let mut server = Server::new(config(None));
        b.iter(|| {
            let answered = run(
                &mut server,
                &plain,
                epoch,
                Duration::ZERO,
                one_source,
                &mut buf,
            );
            assert_eq!(answered, BATCH);
        });
    });

    group.bench_function("rate_limited", |b| {
        // A fresh server per batch, so that `now` starts over with empty buckets.
        b.iter_batched_ref(
            || Server::new(config(Some(RateLimit::default()))),
            |server| {
                let answered = run(server, &plain, epoch, STEP, client, &mut buf);
                assert_eq!(answered, BATCH, "{:?}", server.stats());
            },
            BatchSize::LargeInput,
        );
    });

    group.bench_function("change_request", |b| {
        let mut server = Server::new(config(None));
        b.iter(|| {
            let answered = run(
                &mut server,
                &change,
                epoch,
                Duration::ZERO,
                one_source,
                &mut buf,
            );
            assert_eq!(answered, BATCH);
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
